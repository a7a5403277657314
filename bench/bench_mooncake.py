"""mooncake:// load throughput against the raw wheel, side by side in one run.

Starts a standalone Mooncake instance, writes a generated model (``--tensors``
bf16 tensors of ``--tensor-mib`` MiB) through the connector and, as raw bytes,
through the wheel's own ``batch_put_from``. Then times (best of ``--repeat``):

- raw: the wheel's ``batch_get_into`` of all tensors into one registered buffer
  (the floor a loader can reach through Mooncake's Python API);
- ours: ``connector.get`` of every tensor over ``mooncake://``;
- memory: ``connector.get`` of every tensor over ``memory://``.

Prints a table with ratios to raw and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import os

import torch

from harness import best, raw_wheel_client, write_result
from mooncake_connector import create_remote_connector, standalone



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tensors", type=int, default=32)
    parser.add_argument("--tensor-mib", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/results/mooncake.json")
    args = parser.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "3")

    n, size = args.tensors, args.tensor_mib << 20
    torch.manual_seed(0)
    model = {f"layer.{i}.weight": torch.randn(size // 2, dtype=torch.bfloat16) for i in range(n)}
    total_gib = n * size / 2**30
    with standalone.start(segment_size=f"{4 * n * size >> 20}mb") as inst:
        os.environ.update(inst.env())
        raw, buf = raw_wheel_client(inst, n * size)
        keys = [f"raw/{name}" for name in model]
        ptrs = [buf.ctypes.data + i * size for i in range(n)]
        for i, t in enumerate(model.values()):
            buf[i * size:(i + 1) * size] = t.view(torch.uint8).numpy()
        assert all(r == 0 for r in raw.batch_put_from(keys, ptrs, [size] * n))

        with create_remote_connector("mooncake://") as mc, create_remote_connector("memory://bench") as mem:
            for name, t in model.items():
                mc.set(name, t)
                mem.set(name, t)

            def load_raw():
                assert all(r == size for r in raw.batch_get_into(keys, ptrs, [size] * n))

            rows = {
                "raw_batch_get_into": best(load_raw, args.repeat),
                "ours_mooncake_get": best(lambda: [mc.get(k) for k in model], args.repeat),
                "ours_memory_get": best(lambda: [mem.get(k) for k in model], args.repeat),
            }
            assert all(torch.equal(mc.get(k), t) for k, t in model.items())
        raw.close()

    base = rows["raw_batch_get_into"]
    print(f"{n} tensors x {args.tensor_mib} MiB = {total_gib:.2f} GiB, best of {args.repeat}")
    print(f"{'path':<22} {'GiB/s':>8} {'vs raw':>8}")
    for name, secs in rows.items():
        print(f"{name:<22} {total_gib / secs:>8.2f} {base / secs:>8.2f}")
    write_result(args.out, "mooncake_load_vs_raw_wheel",
                 f"python bench/bench_mooncake.py --tensors {n} --tensor-mib {args.tensor_mib}",
                 total_gib=total_gib,
                 rows=[{"path": k, "seconds": v, "gib_s": total_gib / v, "vs_raw": base / v}
                       for k, v in rows.items()])


if __name__ == "__main__":
    main()
