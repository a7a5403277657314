"""Warm saves in one process, tcp (a storage process holds the memory): the
raw wheel's batch_put_from of the tensors (registered once) against our
save_state_dict at three batch sizes, rows alternated, medians of --repeat.
Each save is swept before the next. What docs/performance.md cites for the
cost of hashing a batch before writing it.

    python bench/experiments/save_batches.py [--full] [--repeat 7]"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GLOG_minloglevel", "3")

from bench import Sweeper, llama_like, nbytes  # noqa: E402
from harness import environ  # noqa: E402
from mooncake.store import MooncakeDistributedStore  # noqa: E402

from mooncake_connector import create_remote_connector, standalone  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="1.09 GiB (default: 186 MiB)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    sd = llama_like(11, 2048, 16384) if args.full else llama_like(3, 1536, 8192)
    names = list(sd)
    sizes = [t.numel() * t.element_size() for t in sd.values()]
    with standalone.start(segment_size=f"{max(1024, (3 * nbytes(sd)) >> 20)}mb", local_buffer_size="256mb",
                          lease_ttl_ms=None, storage_processes=1) as inst, \
            environ({**inst.env(), "MOONCAKE_LOCAL_BUFFER_SIZE": "256mb"}):
        sweeper = Sweeper(inst)
        raw = MooncakeDistributedStore()
        assert raw.setup("127.0.0.1", inst.metadata_server, 0, 256 << 20, "tcp", "", inst.master_address) == 0
        for t in sd.values():
            assert raw.register_buffer(t.data_ptr(), t.numel() * t.element_size()) == 0

        def raw_save(i: int) -> None:
            got = raw.batch_put_from([f"raw{i}/{n}" for n in names], [sd[n].data_ptr() for n in names], sizes)
            assert all(r == 0 for r in got), got

        rows = {"raw batch_put_from": raw_save}
        connectors = {}
        for mib in (256, 64, 32):
            connectors[mib] = [create_remote_connector(f"mooncake:///b{mib}-{i}") for i in range(args.repeat)]
            rows[f"ours batch_bytes {mib} MiB"] = lambda i, mib=mib: connectors[mib][i].save_state_dict(
                sd, batch_bytes=mib << 20)
        times: dict[str, list[float]] = {row: [] for row in rows}
        for i in range(args.repeat):
            for row, fn in rows.items():
                start = time.perf_counter()
                fn(i)
                times[row].append(time.perf_counter() - start)
                for prefix in ("raw", "b"):
                    sweeper.sweep(prefix)
        base = statistics.median(times["raw batch_put_from"])
        print(f"{nbytes(sd) / 2**20:.0f} MiB, tcp, medians of {args.repeat}")
        for row, t in times.items():
            m = statistics.median(t)
            print(f"{row:<26} {m * 1000:7.1f} ms  raw time / this {base / m:.2f}")
        for cs in connectors.values():
            for c in cs:
                c.close()
        raw.close()
        sweeper.close()


if __name__ == "__main__":
    main()
