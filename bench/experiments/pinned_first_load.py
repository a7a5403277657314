"""A first, checksummed `load_into` by a new connector from `memory://`, onto the
GPU from a pinned store (issue 23's target: >= 0.9x the pinned host-to-device
copy of the same bytes) or, with --onto cpu, into CPU tensors.

One process: the model saved once; then, round by round, rows alternated:
  --onto cuda (store `memory://…?pinned=1`): the host-to-device copy of all
    the bytes from one pinned buffer; a `load_into` by a new connector (every
    value hashed: the first load); a `load_into` by a connector that has
    checked the values before (not hashed again);
  --onto cpu (plain `memory://`): torch copying the same tensors (its
    threads); a first `load_into` by a new connector; the same unverified
    (`verify=False`: the copies alone).
The largest tensor of a small model is a large share of it (the 4-layer
llama-like model's embedding: 262 MB of 1.87 GB): before manifest format 4 its
checksum was one thread's work. Destinations are allocated and touched once,
zeroed before each timed load, and checked after the first round. Medians
(min, max) of --rounds.

    python bench/experiments/pinned_first_load.py [--onto cuda|cpu] [--layers 4] [--rounds 7]
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
    parser.add_argument("--onto", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=None, help="write the samples as JSON here")
    args = parser.parse_args()
    gpu = args.onto == "cuda"
    if gpu and not torch.cuda.is_available():
        sys.exit("pinned_first_load: no CUDA device visible to torch (--onto cpu runs without one)")
    sd = llama_like(args.layers, 4096, 32000)
    size = nbytes(sd)
    ref = {n: t.to("cuda") for n, t in sd.items()} if gpu else sd
    dst = {n: torch.zeros_like(t) for n, t in ref.items()}
    url = "memory://pinned-first-load/model" + ("?pinned=1" if gpu else "")
    reference = "h2d pinned" if gpu else "torch copy"
    repeated = "checked before" if gpu else "unverified"
    if gpu:
        host = torch.cat([t.reshape(-1).view(torch.uint8) for t in sd.values()]).pin_memory()
        dev = torch.empty(size, dtype=torch.uint8, device="cuda")

    def clocked(fn) -> float:
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def copy_reference() -> None:
        if gpu:
            dev.copy_(host, non_blocking=True)
        else:
            for n, t in sd.items():
                dst[n].copy_(t)

    with create_remote_connector(url, device=args.onto) as saver, \
            create_remote_connector(url, device=args.onto) as warm:
        saver.save_state_dict(sd)
        warm.load_into(dst)
        times: dict[str, list[float]] = {reference: [], "first load": [], repeated: []}
        for r in range(args.rounds):
            for row in times:
                for d in dst.values():
                    d.zero_()
                if row == reference:
                    times[row].append(clocked(copy_reference))
                    if gpu:
                        continue  # its bytes went elsewhere
                elif row == "first load":
                    with create_remote_connector(url, device=args.onto) as fresh:
                        times[row].append(clocked(lambda: fresh.load_into(dst)))
                elif gpu:
                    times[row].append(clocked(lambda: warm.load_into(dst)))
                else:
                    times[row].append(clocked(lambda: warm.load_into(dst, verify=False)))
                if r == 0:
                    for n in ref:
                        assert torch.equal(dst[n], ref[n]), (row, n)
        saver.remove_model()
    where = torch.cuda.get_device_name(0) if gpu else f"CPU, torch {torch.get_num_threads()} threads"
    print(f"{where}, {os.cpu_count()} cores; llama-like, {args.layers} layers: "
          f"{len(sd)} tensors, {size / 1e9:.2f} GB, largest {max(t.nbytes for t in sd.values()) / 1e6:.0f} MB; "
          f"{args.rounds} rounds")
    base = statistics.median(times[reference])
    for row, ts in times.items():
        m = statistics.median(ts)
        print(f"  {row:<16} {m * 1e3:7.1f} ms ({min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f})"
              f"  {size / m / 1e9:5.1f} GB/s  x {reference} {base / m:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"bytes": size, "layers": args.layers, "onto": args.onto,
                                              "seconds": times}, indent=1))


if __name__ == "__main__":
    main()
