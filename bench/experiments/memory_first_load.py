"""A first, checksummed `load_into` from `memory://` into CPU tensors, against
torch copying the same tensors (its threads) and against the same load
unverified (`verify=False`: copies alone).

The largest tensor of a small model is a large share of it (the 4-layer
llama-like model's embedding: 262 MB of 1.87 GB). Before manifest format 4 its
checksum was one thread's work however many copied; now each 16 MiB piece is
hashed by the thread that copies it. Destinations are allocated and touched
once, zeroed before each timed load, and checked after the first round.
Medians (min, max) of --rounds.

    python bench/experiments/memory_first_load.py [--layers 4] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from bench import llama_like, nbytes  # noqa: E402
from mooncake_connector import create_remote_connector  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=None, help="write the samples as JSON here")
    args = parser.parse_args()
    sd = llama_like(args.layers, 4096, 32000)
    size = nbytes(sd)
    dst = {n: torch.zeros_like(t) for n, t in sd.items()}
    url = "memory://memory-first-load/model"
    with create_remote_connector(url) as saver:
        saver.save_state_dict(sd)
        times: dict[str, list[float]] = {"torch copy": [], "first load": [], "unverified": []}

        def clocked(fn) -> float:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        def copy_all() -> None:
            for n, t in sd.items():
                dst[n].copy_(t)

        for r in range(args.rounds):
            for row in times:
                for d in dst.values():
                    d.zero_()
                if row == "torch copy":
                    times[row].append(clocked(copy_all))
                else:
                    with create_remote_connector(url) as fresh:
                        verify = row == "first load"
                        times[row].append(clocked(lambda: fresh.load_into(dst, verify=verify)))
                if r == 0:
                    for n, t in sd.items():
                        assert torch.equal(dst[n], t), (row, n)
        saver.remove_model()
    print(f"{os.cpu_count()} cores, torch {torch.get_num_threads()} threads; llama-like, {args.layers} layers: "
          f"{len(sd)} tensors, {size / 1e9:.2f} GB, largest {max(t.nbytes for t in sd.values()) / 1e6:.0f} MB; "
          f"{args.rounds} rounds")
    ref = statistics.median(times["torch copy"])
    for row, ts in times.items():
        m = statistics.median(ts)
        print(f"  {row:<16} {m * 1e3:7.1f} ms ({min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f})"
              f"  {size / m / 1e9:5.1f} GB/s  x torch copy {ref / m:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"bytes": size, "layers": args.layers, "seconds": times}, indent=1))


if __name__ == "__main__":
    main()
