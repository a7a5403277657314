"""Faults against a real Mooncake: the master killed in the middle of a load
and started again. Each test runs its own master and storage process (the
session's instance is left alone)."""

from __future__ import annotations

import subprocess
import time

import pytest
import torch

from conftest import export
from mooncake_connector import (DataLossError, NotFoundError, ResourceExhaustedError,
                                UnavailableError, create_remote_connector, standalone)

# A clear error must come within this long of the master going away.
ERROR_WITHIN_S = 10.0
# How long the storage process may take to find the new master again.
RECOVER_WITHIN_S = 30.0


@pytest.fixture
def instance(tmp_path, monkeypatch):
    with standalone.start(segment_size="256mb", local_buffer_size="32mb", lease_ttl_ms=500,
                          log_dir=str(tmp_path / "logs")) as inst:
        export(monkeypatch, inst)
        yield inst


def kill_master(inst: standalone.StandaloneInstance) -> list[str]:
    master = inst.processes[0]
    master.kill()
    master.wait()
    return list(master.args)


def restart_master(inst: standalone.StandaloneInstance, args: list[str]) -> None:
    """The same master command (same ports), as an operator would restart it."""
    log = open(inst.log_dir / "mooncake_master.restarted.log", "wb")
    inst.processes[0] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)


def state_dict(n: int = 24, kib: int = 256) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {f"layers.{i}.weight": torch.randn(kib * 256, generator=g) for i in range(n)}


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


def test_master_killed_during_a_load_then_restarted(instance):
    url = f"mooncake://{instance.master_address}/org/faulty"
    sd = state_dict()
    with create_remote_connector(url) as c:
        c.save_state_dict(sd)
        c.setstr("org/plain-key", "kept?")

        # The master dies after the first batch of the load arrived.
        killed_at = []

        def on_progress(done: int, total: int) -> None:
            if not killed_at:
                killed_at.append(time.monotonic())
                master_args.extend(kill_master(instance))

        master_args: list[str] = []
        got = {}
        with pytest.raises(UnavailableError) as err:
            for name, t in c.weight_iterator(batch_bytes=1 << 20, progress=on_progress):
                got[name] = t
        waited = time.monotonic() - killed_at[0]
        assert waited < ERROR_WITHIN_S, f"the error took {waited:.1f}s"
        assert instance.master_address in str(err.value)
        assert 0 < len(got) < len(sd)

        # The same connector works again once the master is back: no restart
        # of this process, no new connector.
        restart_master(instance, master_args)
        _, took = until_works(lambda: c.setstr("org/after", "again"), RECOVER_WITHIN_S)
        assert c.getstr("org/after") == "again"

        # A master without persistence loses every object. What this
        # connector saw saved is reported lost, naming the tensors; a plain
        # key has no manifest and reads as absent.
        with pytest.raises(DataLossError) as lost:
            c.load_state_dict()
        message = str(lost.value)
        assert f"{len(sd)} of its {len(sd)} tensors" in message
        assert "'layers.0.weight'" in message and "master restarted" in message
        assert c.getstr("org/plain-key") is None

        # To a connector that never saw the model, it was never saved.
        with create_remote_connector(url) as fresh, pytest.raises(NotFoundError):
            fresh.load_state_dict()

        # Saved again, it loads bit-exact.
        c.save_state_dict(sd)
        back = c.load_state_dict()
        assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_operations_while_the_master_is_down_fail_fast(instance):
    url = f"mooncake://{instance.master_address}/org/down"
    with create_remote_connector(url) as c:
        c.setstr("k", "v")
        args = kill_master(instance)
        for name, op in (("get", lambda: c.getstr("k")), ("set", lambda: c.setstr("k2", "v")),
                         ("exists", lambda: c.exists("k")), ("remove", lambda: c.remove("k")),
                         ("list", lambda: c.list("")), ("load", lambda: c.load_state_dict())):
            start = time.monotonic()
            with pytest.raises(UnavailableError, match=instance.master_address):
                op()
                pytest.fail(f"{name} succeeded with the master down")
            took = time.monotonic() - start
            assert took < ERROR_WITHIN_S, f"{name} took {took:.1f}s to fail"
        restart_master(instance, args)
        until_works(lambda: c.setstr("k3", "v3"), RECOVER_WITHIN_S)
        assert c.getstr("k3") == "v3"
