"""Plants and inspects objects with the raw Mooncake wheel, in a process of
its own (as another client of the cluster would): ``python raw_wheel.py
SPEC.json`` runs the operations listed in the spec and prints their results
as JSON. Used by the tests to plant hostile or foreign bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run(ops: list[dict], tmp: Path) -> list:
    """Runs `ops` in a separate process; each op is one of
    {"put": key, "file": path}, {"upsert": key, "file": path},
    {"get": key, "file": path, "size": n}, {"remove": key, "force": bool}."""
    spec = tmp / "raw_ops.json"
    spec.write_text(json.dumps(ops))
    out = subprocess.run([sys.executable, __file__, str(spec)], capture_output=True, text=True,
                         timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _main(spec_path: str) -> None:
    import numpy as np
    from mooncake.store import MooncakeDistributedStore, ReplicateConfig

    s = MooncakeDistributedStore()
    rc = s.setup(os.environ["MOONCAKE_LOCAL_HOSTNAME"], os.environ["MOONCAKE_TE_META_DATA_SERVER"],
                 0, 64 << 20, "tcp", "", os.environ["MOONCAKE_MASTER"])
    assert rc == 0, rc
    results = []
    for op in json.loads(Path(spec_path).read_text()):
        if "put" in op or "upsert" in op:
            data = np.fromfile(op["file"], dtype=np.uint8)
            s.register_buffer(data.ctypes.data, data.nbytes)
            cfg = ReplicateConfig()
            fn = s.put_from if "put" in op else s.upsert_from
            results.append(fn(op.get("put", op.get("upsert")), data.ctypes.data, data.nbytes, cfg))
            s.unregister_buffer(data.ctypes.data)
        elif "get" in op:
            data = np.zeros(op["size"], dtype=np.uint8)
            s.register_buffer(data.ctypes.data, data.nbytes)
            n = s.get_into(op["get"], data.ctypes.data, data.nbytes)
            s.unregister_buffer(data.ctypes.data)
            if n >= 0:
                data[:n].tofile(op["file"])
            results.append(n)
        elif "remove" in op:
            results.append(s.remove(op["remove"], op.get("force", False)))
    s.close()
    print(json.dumps(results))


if __name__ == "__main__":
    _main(sys.argv[1])
