"""memory:// throughput against a plain memcpy, side by side in one run.

For each tensor size, times (best of --repeat rounds; each round repeats the
operation until 256 MiB have moved, so small sizes are not dominated by timer
noise) a torch clone (an allocation plus a memcpy: the floor for any copy into
fresh memory), connector.set and connector.get on the embedded store, and
prints the ratios to the clone. Writes the table as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mooncake_connector import create_remote_connector


def best_seconds(fn, repeat: int, times: int) -> float:
    """Best per-call time over `repeat` rounds of `times` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(times):
            fn()
        best = min(best, (time.perf_counter() - start) / times)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes-mib", default="1,16,64,256")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="bench/results/memory.json")
    args = parser.parse_args()

    rows = []
    with create_remote_connector("memory://bench") as c:
        for mib in (int(s) for s in args.sizes_mib.split(",")):
            t = torch.randint(0, 255, (mib << 20,), dtype=torch.uint8).view(torch.bfloat16)
            c.set("w", t)
            times = max(1, 256 // mib)
            clone = best_seconds(lambda: t.clone(), args.repeat, times)
            put = best_seconds(lambda: c.set("w", t), args.repeat, times)
            get = best_seconds(lambda: c.get("w"), args.repeat, times)
            assert torch.equal(c.get("w").view(torch.uint8), t.view(torch.uint8))  # bit-exact
            gib = (mib << 20) / 2**30
            rows.append({
                "size_mib": mib,
                "memcpy_gib_s": gib / clone,
                "set_gib_s": gib / put,
                "get_gib_s": gib / get,
                "set_vs_memcpy": clone / put,
                "get_vs_memcpy": clone / get,
            })

    print(f"{'size':>8} {'memcpy GiB/s':>13} {'set GiB/s':>10} {'get GiB/s':>10} "
          f"{'set/memcpy':>11} {'get/memcpy':>11}")
    for r in rows:
        print(f"{r['size_mib']:>6}Mi {r['memcpy_gib_s']:>13.2f} {r['set_gib_s']:>10.2f} "
              f"{r['get_gib_s']:>10.2f} {r['set_vs_memcpy']:>11.2f} {r['get_vs_memcpy']:>11.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "memory_store_vs_memcpy",
        "command": "make bench",
        "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform()},
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
