"""What the benchmarks share: best-of-N timing and the JSON result file."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator


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


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """Sets `env` in os.environ for the block, then puts back what was there."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


MODES = ("tcp", "own", "client")


def add_load_args(parser: argparse.ArgumentParser, out: str) -> None:
    """The arguments every load benchmark takes: the model's size, the
    deployment modes and the result file."""
    parser.add_argument("--full", action="store_true", help="a model of at least 1 GiB (default: ~190 MiB)")
    parser.add_argument("--tiny", action="store_true", help="a few MiB: checks that every row runs (tests)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", default=out)


def parse_modes(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """--modes as a list, each one of MODES (else a usage error)."""
    modes = [m for m in text.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}: choose from {', '.join(MODES)}")
    return modes
