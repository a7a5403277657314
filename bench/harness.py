"""What the benchmarks share: best-of-N timing and the JSON result file."""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable


def best(fn: Callable[[], Any], repeat: int, setup: Callable[[], Any] = lambda: None) -> float:
    """The fastest of `repeat` runs of `fn`, in seconds (the least disturbed
    one on a noisy machine); `setup` runs, untimed, before each."""
    times = []
    for _ in range(repeat):
        setup()
        gc.collect()
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
