"""A reader that holds the segment (the "own" deployment of bench/bench.py):
a master with no storage process, this process's connector contributing the
only segment, so every object lies in its own memory and its loads copy
tensors from there themselves (local reads). Loads are bit-exact with local
reads on and off, from several threads at once, and a bit flipped in the
segment behind Mooncake's back is a checksum mismatch, not wrong weights."""

from __future__ import annotations

import ctypes
import threading
import warnings

import pytest
import torch

from conftest import assert_bit_exact, export, random_tensor
from mooncake_connector import DataLossError, OwnSegmentWarning, create_remote_connector, standalone

MiB = 1 << 20


@pytest.fixture(scope="module")
def own_segment():
    with standalone.start(segment_size="64mb", local_buffer_size="64mb", lease_ttl_ms=500,
                          storage_processes=0) as inst, pytest.MonkeyPatch.context() as env:
        export(env, inst)
        env.setenv("MOONCAKE_GLOBAL_SEGMENT_SIZE", "512mb")
        # Held for the module: the segment (and what is stored in it) lives
        # as long as this client.
        with create_remote_connector("mooncake://") as holder:
            yield inst, holder


def state_dict() -> dict[str, torch.Tensor]:
    # Raw objects of 1-16 MiB, values of several 16 MiB chunks, small ones
    # (read through the staging slots).
    return {
        "embed.weight": random_tensor(torch.bfloat16, (9000, 2048), seed=1),  # 35 MiB: 3 chunks
        "q.weight": random_tensor(torch.bfloat16, (1024, 1024), seed=2),  # 2 MiB
        "up.weight": random_tensor(torch.float32, (1024, 2730), seed=3),  # 10.7 MiB
        "norm.weight": random_tensor(torch.float32, (1024,), seed=4),
        "bias": random_tensor(torch.float16, (3, 5), seed=5),
    }


def assert_same(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for name, t in expected.items():
        assert_bit_exact(actual[name], t)


@pytest.mark.parametrize("local_reads", ["1", "0"])
def test_every_load_path_is_bit_exact(own_segment, local_reads):
    sd = state_dict()
    with create_remote_connector(f"mooncake:///own/m{local_reads}?local_reads={local_reads}") as c:
        c.save_state_dict(sd)
        assert_same(dict(c.weight_iterator()), sd)
        assert_same(c.load_state_dict(), sd)
        dest = {n: torch.empty_like(t) for n, t in sd.items()}
        assert c.load_into(dest) == []
        assert_same(dest, sd)
        c.remove_model()


def test_concurrent_loads_are_bit_exact(own_segment):
    sd = state_dict()
    with create_remote_connector("mooncake:///own/shared") as c:
        c.save_state_dict(sd)
        failures: list[str] = []

        def load(worker: int) -> None:
            try:
                with create_remote_connector("mooncake:///own/shared") as r:
                    for _ in range(3):
                        dest = {n: torch.empty_like(t) for n, t in sd.items()}
                        assert r.load_into(dest, batch_bytes=16 * MiB) == []
                        for n, t in sd.items():
                            if not torch.equal(dest[n].view(torch.uint8), t.view(torch.uint8)):
                                failures.append(f"worker {worker}: {n}")
            except Exception as e:  # noqa: BLE001 - every failure is reported
                failures.append(f"worker {worker}: {e!r}")

        threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        c.remove_model()


def test_a_flipped_bit_in_the_segment_is_a_checksum_mismatch(own_segment):
    inst, _ = own_segment
    from mooncake.store import MooncakeDistributedStore

    sd = state_dict()
    victim = "q.weight"  # one raw object of 2 MiB: its key is the tensor's
    with create_remote_connector("mooncake:///own/bad") as c:
        c.save_state_dict(sd)
        key = f"own/bad/keys/rank_0/{victim}"
        # Where the object lies (this process's memory), asked by a second,
        # pure client of the same master.
        probe = MooncakeDistributedStore()
        assert probe.setup("127.0.0.1", inst.metadata_server, 0, 16 * MiB, "tcp", "", inst.master_address) == 0
        try:
            (replica,) = probe.get_replica_desc(key)
            where = replica.get_memory_descriptor().buffer_descriptor
        finally:
            probe.close()
        assert where.size > 2 * MiB
        byte = ctypes.c_uint8.from_address(where.buffer_address + where.size - 12345)
        byte.value ^= 0x40
        try:
            with pytest.raises(DataLossError, match=f"checksum mismatch in tensor '{victim}'"):
                c.load_into({n: torch.empty_like(t) for n, t in sd.items()})
            with pytest.raises(DataLossError, match=victim):
                c.load_state_dict()
        finally:
            byte.value ^= 0x40
        assert_same(c.load_state_dict(), sd)
        c.remove_model()


def test_a_save_through_a_connector_with_its_own_segment_warns(own_segment):
    """What a connector that contributes memory saves may live only in this
    process: the save says so, and so does closing the connector. A pure
    client saves without a word."""
    c = create_remote_connector("mooncake:///own/warned")  # the environment contributes 512 MB
    with pytest.warns(OwnSegmentWarning, match="only in this process's memory"):
        c.save_state_dict({"w": torch.ones(4)})
    with pytest.warns(OwnSegmentWarning, match="closing connector .* the models this connector saved"):
        c.close()
    with create_remote_connector("mooncake:///own/quiet", global_segment_size=0) as pure, \
            warnings.catch_warnings():
        warnings.simplefilter("error", OwnSegmentWarning)
        pure.save_state_dict({"w": torch.ones(4)})
        pure.close()
