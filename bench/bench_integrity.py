"""The cost of mooncake://'s guarantees (docs/mooncake_layout.md), side by
side in one run against one standalone instance, same bytes per row:

- set of new keys (one raw object each)      vs the wheel's put_from per key;
- set over existing keys (chunks + checksum + in-place header upsert + settle
  + removal of the old chunks)               vs the wheel's upsert_from per key;
- get of raw values                          vs the wheel's get_into per key;
- get of overwritten values (header + chunks, XXH3 verified)
                                             vs the wheel's get_into per key.

The wheel's calls use one pre-registered buffer (no copies, no checks): the
ceiling of Mooncake's Python API. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from harness import best, write_result
from mooncake_connector import create_remote_connector, standalone



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--values", type=int, default=16)
    parser.add_argument("--value-mib", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/results/integrity.json")
    args = parser.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "3")
    from mooncake.store import MooncakeDistributedStore  # noqa: PLC0415

    n, size = args.values, args.value_mib << 20
    rng = np.random.default_rng(0)
    values = [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(n)]
    blobs = [v.tobytes() for v in values]
    total_gib = n * size / 2**30
    rows: dict[str, tuple[float, float]] = {}  # name -> (ours, raw) seconds
    with standalone.start(segment_size=f"{24 * n * size >> 20}mb", lease_ttl_ms=200) as inst:
        os.environ.update(inst.env())
        raw = MooncakeDistributedStore()
        assert raw.setup("127.0.0.1", inst.metadata_server, 0, 64 << 20, "tcp", "",
                         inst.master_address) == 0
        buf = np.concatenate(values)
        assert raw.register_buffer(buf.ctypes.data, buf.nbytes) == 0
        ptr = [buf.ctypes.data + i * size for i in range(n)]

        with create_remote_connector("mooncake://") as mc:
            rounds = {"ours": 0, "raw": 0}  # each timed round writes keys never written before

            def ours_new():
                rounds["ours"] += 1
                for i in range(n):
                    mc.setbytes(f"new{rounds['ours']}/{i}", blobs[i])

            def raw_new():
                rounds["raw"] += 1
                for i in range(n):
                    assert raw.put_from(f"rawnew{rounds['raw']}/{i}", ptr[i], size) == 0

            rows["set new keys"] = (best(ours_new, args.repeat), best(raw_new, args.repeat))

            for i in range(n):
                mc.setbytes(f"over/{i}", blobs[i])
                assert raw.put_from(f"rawover/{i}", ptr[i], size) == 0

            def ours_over():
                for i in range(n):
                    mc.setbytes(f"over/{i}", blobs[(i + 1) % n])

            def raw_over():
                for i in range(n):
                    assert raw.upsert_from(f"rawover/{i}", ptr[(i + 1) % n], size) == 0

            rows["set over existing keys"] = (best(ours_over, args.repeat), best(raw_over, args.repeat))

            out = np.empty(size, dtype=np.uint8)
            assert raw.register_buffer(out.ctypes.data, out.nbytes) == 0

            def raw_get(prefix: str):
                for i in range(n):
                    assert raw.get_into(f"{prefix}/{i}", out.ctypes.data, size) == size

            rows["get raw values"] = (best(lambda: [mc.getbytes(f"new1/{i}") for i in range(n)], args.repeat),
                                      best(lambda: raw_get("rawnew1"), args.repeat))
            rows["get overwritten values (checksummed)"] = (
                best(lambda: [mc.getbytes(f"over/{i}") for i in range(n)], args.repeat),
                best(lambda: raw_get("rawover"), args.repeat))
            assert mc.getbytes("new1/3") == blobs[3]
        raw.close()

    print(f"{n} values x {args.value_mib} MiB = {total_gib:.2f} GiB per row, best of {args.repeat}")
    print(f"{'operation':<40} {'ours GiB/s':>10} {'raw GiB/s':>10} {'ours/raw':>9}")
    for name, (ours, rawt) in rows.items():
        print(f"{name:<40} {total_gib / ours:>10.2f} {total_gib / rawt:>10.2f} {rawt / ours:>9.2f}")
    write_result(args.out, "mooncake_integrity_cost",
                 f"python bench/bench_integrity.py --values {n} --value-mib {args.value_mib}",
                 gib_per_row=total_gib,
                 rows=[{"operation": k, "ours_seconds": o, "raw_seconds": r, "ours_vs_raw": r / o}
                       for k, (o, r) in rows.items()])


if __name__ == "__main__":
    main()
