"""A first, checksummed load onto the GPU from a pinned memory:// store, against
the pinned host-to-device copy of the same bytes (issue 23's target: >= 0.9x).

One process: the model saved once into `memory://…?pinned=1`; then, round by
round, the host-to-device copy of all the bytes from one pinned buffer, a
`load_into` by a new connector (every value hashed: the first load), and a
`load_into` by a connector that has checked the values before (no hashing).
Destinations are zeroed before each timed load and checked after the first
round. Medians (min, max) of --rounds.

    python bench/experiments/pinned_first_load.py [--layers 4] [--rounds 7]
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
    if not torch.cuda.is_available():
        sys.exit("pinned_first_load: no CUDA device visible to torch")
    sd = llama_like(args.layers, 4096, 32000)
    size = nbytes(sd)
    host = torch.cat([t.reshape(-1).view(torch.uint8) for t in sd.values()]).pin_memory()
    dev = torch.empty(size, dtype=torch.uint8, device="cuda")
    ref = {n: t.to("cuda") for n, t in sd.items()}
    gpu = {n: torch.empty_like(t) for n, t in ref.items()}
    url = "memory://pinned-first-load/model?pinned=1"
    with create_remote_connector(url, device="cuda") as saver, create_remote_connector(url, device="cuda") as warm:
        saver.save_state_dict(sd)
        warm.load_into(gpu)
        times: dict[str, list[float]] = {"h2d pinned": [], "first load": [], "checked before": []}

        def clocked(fn) -> float:
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return time.perf_counter() - start

        for r in range(args.rounds):
            times["h2d pinned"].append(clocked(lambda: dev.copy_(host, non_blocking=True)))
            for row in ("first load", "checked before"):
                for g in gpu.values():
                    g.zero_()
                if row == "first load":
                    with create_remote_connector(url, device="cuda") as fresh:
                        times[row].append(clocked(lambda: fresh.load_into(gpu)))
                else:
                    times[row].append(clocked(lambda: warm.load_into(gpu)))
                if r == 0:
                    for n in ref:
                        assert torch.equal(gpu[n], ref[n]), (row, n)
        saver.remove_model()
    print(f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} cores; llama-like, {args.layers} layers: "
          f"{len(sd)} tensors, {size / 1e9:.2f} GB, largest {max(t.nbytes for t in sd.values()) / 1e6:.0f} MB; "
          f"{args.rounds} rounds")
    h2d = statistics.median(times["h2d pinned"])
    for row, ts in times.items():
        m = statistics.median(ts)
        print(f"  {row:<16} {m * 1e3:7.1f} ms ({min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f})"
              f"  {size / m / 1e9:5.1f} GB/s  x h2d {h2d / m:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"bytes": size, "layers": args.layers, "seconds": times}, indent=1))


if __name__ == "__main__":
    main()
