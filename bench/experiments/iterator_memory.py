"""What weight_iterator holds in flight, by batch size: a 1.1 GiB model saved
over tcp, its parameters allocated and touched first, then one process
iterates, copying each tensor into its parameter, and prints the peak RSS
above where it stood before (VmHWM reset through /proc/self/clear_refs)
for its first iteration at --batch-mib, then warm times at 256, 128 and
64 MiB, alternated, three each.

    python bench/experiments/iterator_memory.py --batch-mib 128"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GLOG_minloglevel", "3")

import torch  # noqa: E402
from bench import llama_like, peak_growth_mib  # noqa: E402
from harness import environ  # noqa: E402

from mooncake_connector import create_remote_connector, standalone  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-mib", type=int, default=128)
    args = parser.parse_args()
    sd = llama_like(11, 2048, 16384)
    with standalone.start(segment_size="4096mb", local_buffer_size="256mb", lease_ttl_ms=None,
                          storage_processes=1) as inst, \
            environ({**inst.env(), "MOONCAKE_LOCAL_BUFFER_SIZE": "256mb"}):
        with create_remote_connector("mooncake:///iterator-memory") as c:
            c.save_state_dict(sd)
        params = {n: torch.empty_like(t).zero_() for n, t in sd.items()}
        del sd
        with create_remote_connector("mooncake:///iterator-memory") as c:
            c.exists("warm-up")
            def iterate(mib: int) -> float:
                start = time.perf_counter()
                for name, tensor in c.weight_iterator(batch_bytes=mib << 20):
                    params[name].copy_(tensor)
                return time.perf_counter() - start

            first: list[float] = []
            peak = peak_growth_mib(lambda: first.append(iterate(args.batch_mib)))
            print(f"first iteration, {args.batch_mib} MiB batches: {first[0]:.3f} s, "
                  f"peak RSS {peak:.0f} MiB above the parameters")
            times: dict[int, list[float]] = {}
            for _ in range(3):
                for mib in (256, 128, 64):
                    times.setdefault(mib, []).append(iterate(mib))
            print("warm, s (sorted):", {mib: sorted(round(t, 3) for t in ts) for mib, ts in times.items()})


if __name__ == "__main__":
    main()
