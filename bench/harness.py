"""What the benchmarks share: best-of-N timing and the JSON result file."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable


def best(fn: Callable[[], Any], repeat: int) -> float:
    """The fastest of `repeat` runs of `fn`, in seconds (the least disturbed
    one on a noisy machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def write_result(path: str, benchmark: str, command: str, **fields: Any) -> None:
    """Writes a result file with the benchmark's name, the command that
    reproduces it and the machine it ran on."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": benchmark,
        "command": command,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        **fields,
    }, indent=2) + "\n")
    print(f"wrote {out}")


def raw_wheel_client(inst: Any, buffer_bytes: int):
    """The Mooncake wheel's own client for a standalone instance, with one
    registered numpy buffer of `buffer_bytes` (the raw-wheel baseline rows)."""
    import numpy as np
    from mooncake.store import MooncakeDistributedStore

    raw = MooncakeDistributedStore()
    assert raw.setup("127.0.0.1", inst.metadata_server, 0, 64 << 20, "tcp", "",
                     inst.master_address) == 0
    buf = np.empty(buffer_bytes, dtype=np.uint8)
    assert raw.register_buffer(buf.ctypes.data, buf.nbytes) == 0
    return raw, buf
