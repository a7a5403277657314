"""Faults against a real Mooncake: the master killed in the middle of a load
and started again; a storage process killed under a model saved with one or
two replicas. Each test runs its own master and storage processes (the
session's instance is left alone)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from conftest import export
from faults import fill_pool, kill, restart, until_works
from mooncake_connector import (DataLossError, NotFoundError, UnavailableError,
                                create_remote_connector, standalone)

MASTER = 0  # index in StandaloneInstance.processes

# A clear error must come within this long of the master going away.
ERROR_WITHIN_S = 10.0
# How long the storage process may take to find the new master again.
RECOVER_WITHIN_S = 30.0


# The master drops a dead storage process's replicas after its client_ttl
# (10 s by default); reads keep trying until op_timeout, which must cover it.
STORAGE_URL_OPTIONS = "op_timeout=30s"


@pytest.fixture
def instance(tmp_path, monkeypatch):
    with standalone.start(segment_size="256mb", local_buffer_size="32mb", lease_ttl_ms=500,
                          log_dir=str(tmp_path / "logs")) as inst:
        export(monkeypatch, inst)
        yield inst


@pytest.fixture
def two_storage(tmp_path, monkeypatch):
    with standalone.start(segment_size="256mb", local_buffer_size="32mb", lease_ttl_ms=500,
                          log_dir=str(tmp_path / "logs"), storage_processes=2) as inst:
        export(monkeypatch, inst)
        yield inst


def state_dict(n: int = 24, kib: int = 256) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {f"layers.{i}.weight": torch.randn(kib * 256, generator=g) for i in range(n)}


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
                kill(instance, MASTER)

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
        restart(instance, MASTER)
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
        kill(instance, MASTER)
        for name, op in (("get", lambda: c.getstr("k")), ("set", lambda: c.setstr("k2", "v")),
                         ("exists", lambda: c.exists("k")), ("remove", lambda: c.remove("k")),
                         ("list", lambda: c.list("")), ("load", lambda: c.load_state_dict())):
            start = time.monotonic()
            with pytest.raises(UnavailableError, match=instance.master_address):
                op()
                pytest.fail(f"{name} succeeded with the master down")
            took = time.monotonic() - start
            assert took < ERROR_WITHIN_S, f"{name} took {took:.1f}s to fail"
        restart(instance, MASTER)
        until_works(lambda: c.setstr("k3", "v3"), RECOVER_WITHIN_S)
        assert c.getstr("k3") == "v3"


def test_storage_killed_two_replicas_the_load_completes(two_storage):
    url = f"mooncake://{two_storage.master_address}/org/replicated?replica_num=2&{STORAGE_URL_OPTIONS}"
    sd = state_dict()
    with create_remote_connector(url) as c:
        c.save_state_dict(sd)
        kill(two_storage, 1)
        start = time.monotonic()
        back = c.load_state_dict()
        took = time.monotonic() - start
        assert set(back) == set(sd)
        assert all(torch.equal(back[k], v) for k, v in sd.items())
        # Reads failed over once the master dropped the dead replicas: the
        # first waits for that (client_ttl), the next loads at full speed.
        assert took < 25, f"{took:.1f}s"
        start = time.monotonic()
        again = c.load_state_dict()
        assert time.monotonic() - start < 5
        assert all(torch.equal(again[k], v) for k, v in sd.items())


def test_storage_killed_one_replica_the_load_names_what_was_lost(two_storage):
    url = f"mooncake://{two_storage.master_address}/org/single?{STORAGE_URL_OPTIONS}"
    sd = state_dict(n=32)
    with create_remote_connector(url) as c:
        c.save_state_dict(sd)
        kill(two_storage, 1)
        # About half of the values lived on the dead process. The load is
        # DataLoss naming what was lost (a tensor, or the manifest itself
        # when a piece of it was there), not a missing model and not a
        # shorter state dict.
        with pytest.raises(DataLossError) as lost:
            c.load_state_dict()
        message = str(lost.value)
        assert "'layers." in message or "'org/single/manifest/rank_0.json'" in message, message
        # The survivors are still there, and a new save makes it whole.
        c.save_state_dict(sd)
        back = c.load_state_dict()
        assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_memory_pressure_evicts_only_a_model_saved_unpinned_and_says_so(instance):
    """Fill the 256 MB pool far past its high watermark with other (unpinned)
    keys: a model saved as by default (hard-pinned) loads bit-exact and stays
    complete; one saved with pin=False is evicted in part, inspect/ls say
    'damaged' with the count, and its load is DataLoss naming what went."""
    sd = state_dict(n=16, kib=1024)  # 16 x 4 MiB
    base = f"mooncake://{instance.master_address}"
    with create_remote_connector(f"{base}/org/pinned") as pinned, \
            create_remote_connector(f"{base}/org/unpinned") as unpinned, \
            create_remote_connector(f"{base}/filler") as filler:
        pinned.save_state_dict(sd)
        unpinned.save_state_dict(sd, pin=False)
        assert unpinned.inspect_model()["complete"]
        assert fill_pool(filler, 30) == 30  # 30 x 16 MiB through a 256 MB segment
        info = unpinned.inspect_model()
        assert not info["complete"] and 0 < info["missing"] <= info["listed"] == 16, info
        assert any(p.startswith(f"damaged: {info['missing']} of its 16 values are gone") for p in info["problems"])
        with create_remote_connector(base) as everything:
            listed = {m["name"]: m for m in everything.list_models()}
        assert listed["org/unpinned"]["missing"] == info["missing"] and listed["org/pinned"]["complete"]
        with pytest.raises(DataLossError) as evicted:
            unpinned.load_state_dict()
        assert "org/unpinned" in str(evicted.value) and "layers." in str(evicted.value)
        assert pinned.inspect_model()["complete"] and pinned.inspect_model()["missing"] == 0
        back = pinned.load_state_dict()
        assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_remove_of_a_leased_key(tmp_path, monkeypatch):
    """As docs/mooncake.md says: remove never force-removes. It marks the key
    removed at once (readers see None); a raw value is replaced by the
    tombstone (Mooncake keeps the leased bytes for readers in flight), so the
    remove is done at once; a chunked value's header is marked in place and
    its lease waited out, up to op_timeout, past which the 64-byte tombstone
    stays (listed) until the key is removed again."""
    with standalone.start(segment_size="128mb", local_buffer_size="16mb", lease_ttl_ms=3000,
                          log_dir=str(tmp_path / "logs")) as inst:
        export(monkeypatch, inst)
        base = f"mooncake://{inst.master_address}/x"
        with create_remote_connector(base) as c:
            for key, writes, waits in (("raw", 1, False), ("chunked", 2, True)):
                for _ in range(writes):  # a second write is an overwrite: chunked
                    c.setbytes(key, b"v" * 1000)
                assert c.getbytes(key) is not None  # a 3 s read lease
                seen = []
                t = threading.Thread(target=lambda: (time.sleep(0.3), seen.append(c.getbytes(key))))
                t.start()
                start = time.monotonic()
                c.remove(key)
                took = time.monotonic() - start
                t.join()
                assert seen == [None], key
                assert (2.0 < took < 8) if waits else took < 1.5, f"{key}: {took:.1f}s"
                assert c.list("") == [], key
        with create_remote_connector(base + "?op_timeout=1s") as c:
            c.setbytes("k", b"v" * 1000)
            c.setbytes("k", b"w" * 1000)
            assert c.getbytes("k") is not None
            c.remove("k")  # gives up waiting after 1 s
            assert c.getbytes("k") is None and not c.exists("k")
            assert c.list("") == ["k"]  # the tombstone object
            time.sleep(3.2)  # leases over
            c.remove("k")
            assert c.list("") == []
