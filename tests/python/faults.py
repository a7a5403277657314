"""Fault injection on a standalone Mooncake instance: kill one of its
processes (the master is processes[0], storage processes follow) and start
it again with the same command line, hence the same ports, as an operator's
restart would."""

from __future__ import annotations

import subprocess
import time

from mooncake_connector import ResourceExhaustedError, UnavailableError, standalone


def kill(inst: standalone.StandaloneInstance, index: int) -> None:
    p = inst.processes[index]
    p.kill()
    p.wait()


def restart(inst: standalone.StandaloneInstance, index: int) -> None:
    """Starts processes[index] again (after kill) with its own arguments."""
    old = inst.processes[index]
    log = open(inst.log_dir / f"process{index}.restarted.{time.monotonic_ns()}.log", "wb")
    inst.processes[index] = subprocess.Popen(list(old.args), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()


def until_works(fn, within: float):
    """fn() once the store serves again, and how long that took: first the
    master is unreachable, then it has no segment until the storage process
    has mounted its own again."""
    start = time.monotonic()
    while True:
        try:
            return fn(), time.monotonic() - start
        except (UnavailableError, ResourceExhaustedError):
            if time.monotonic() - start > within:
                raise
            time.sleep(0.5)


def fill_pool(conn, count: int, elements: int = 4 << 20) -> int:
    """Writes `count` float32 zero tensors of `elements` under filler/N (16
    MiB each by default), waiting out the refusals while Mooncake evicts in
    the background; returns how many went in."""
    import torch  # noqa: PLC0415

    written = 0
    for i in range(count):
        for _ in range(20):
            try:
                conn.set(f"filler/{i}", torch.zeros(elements))
                written += 1
                break
            except ResourceExhaustedError:
                time.sleep(0.1)
    return written
