"""Streaming loads in standalone-client mode read into the mooncake_client's
shared memory (tensors lent by the C++ core, written in place by the client
process), from a process's third streaming load on: same bytes, same checks
and errors as staged loads, tensors valid after the connector closes, and
loaders side by side on one connector get their own bytes. Against the real
mooncake_client of the session's standalone instance."""

from __future__ import annotations

import gc
import threading
import time

import pytest
import torch

from conftest import assert_bit_exact, clear_mooncake, random_tensor
from mooncake_connector import DataLossError, create_remote_connector

pytestmark = pytest.mark.usefixtures("mooncake_cluster")

URL = "mooncake:///shared/model"
BATCH = 4 << 20
LARGE = 1 << 20  # values from this size on are read straight into their memory


def state_dict() -> dict[str, torch.Tensor]:
    sd = {}
    for i in range(4):
        sd[f"layers.{i}.a"] = random_tensor(torch.bfloat16, (768, 1024), seed=i)  # 1.5 MiB
        sd[f"layers.{i}.b"] = random_tensor(torch.float32, (1024, 512), seed=10 + i)  # 2 MiB
        sd[f"layers.{i}.norm"] = random_tensor(torch.float32, (64,), seed=20 + i)
    sd["tied"] = sd["layers.0.a"]  # an alias of a stored tensor
    return sd


def shared_ranges() -> list[tuple[int, int]]:
    """The address ranges of this process's memfd mappings (Mooncake's shared memory)."""
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "/memfd:" in line:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                out.append((start, end))
    return out


def in_shared(t: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    p, n = t.data_ptr(), t.numel() * t.element_size()
    return any(a <= p and p + n <= b for a, b in ranges)


def stream(c, sd, batch_bytes: int = BATCH) -> tuple[int, int]:
    """One load as a model loader does it (each tensor checked, then let
    go); (large tensors in shared memory, large tensors)."""
    ranges = shared_ranges()
    shared = large = 0
    seen = set()
    for name, t in c.weight_iterator(batch_bytes=batch_bytes):
        assert_bit_exact(t, sd[name])
        seen.add(name)
        if t.numel() * t.element_size() >= LARGE:
            large += 1
            shared += in_shared(t, ranges)
    assert seen == set(sd)
    return shared, large


def until_shared(c, sd, timeout: float = 20.0) -> None:
    """Streams until a load reads its large tensors into shared memory (the
    regions are made in the background after the second load)."""
    deadline = time.monotonic() + timeout
    while True:
        shared, large = stream(c, sd)
        if shared >= large * 3 // 4:
            return
        assert time.monotonic() < deadline, f"{shared} of {large} large tensors in shared memory"
        time.sleep(0.05)


@pytest.fixture
def saved(mooncake_cluster, monkeypatch):
    clear_mooncake()
    sd = state_dict()
    with create_remote_connector(URL) as c:  # a full client writes
        c.save_state_dict(sd)
    monkeypatch.setenv("MOONCAKE_CLIENT", mooncake_cluster.client_address)
    return sd


def test_third_streaming_load_reads_into_shared_memory(saved):
    sd = saved
    with create_remote_connector(URL) as c:
        # A process that streams once or twice gets ordinary memory.
        assert stream(c, sd)[0] == 0
        assert stream(c, sd)[0] == 0
        until_shared(c, sd)
        for _ in range(3):  # blocks come back and are lent again
            shared, large = stream(c, sd)
            assert shared >= large * 3 // 4, (shared, large)
        # Loads that keep every tensor and preallocated destinations are as ever.
        loaded = c.load_state_dict()
        assert not any(in_shared(t, shared_ranges()) for t in loaded.values())
        for name, t in loaded.items():
            assert_bit_exact(t, sd[name])
        assert loaded["tied"].data_ptr() == loaded["layers.0.a"].data_ptr()
        dest = {n: torch.empty_like(t) for n, t in sd.items() if n != "tied"}
        c.load_into(dest, strict=False)
        for name, t in dest.items():
            assert_bit_exact(t, sd[name])


def test_tensors_kept_from_shared_memory_outlive_the_connector(saved):
    sd = saved
    c = create_remote_connector(URL)
    until_shared(c, sd)
    kept = list(c.weight_iterator(batch_bytes=BATCH))  # kept: blocks run out, the rest is ordinary memory
    ranges = shared_ranges()
    assert any(in_shared(t, ranges) for _, t in kept)
    c.close()
    gc.collect()
    for name, t in kept:
        assert_bit_exact(t, sd[name])
    kept.clear()
    gc.collect()


def test_corrupted_tensor_read_into_shared_memory_is_data_loss(saved, monkeypatch):
    sd = saved
    victim = "layers.2.b"
    with create_remote_connector(URL) as c:
        until_shared(c, sd)
        monkeypatch.delenv("MOONCAKE_CLIENT")
        with create_remote_connector(URL) as plain:  # a full client rewrites one bit
            key = f"shared/model/keys/rank_0/{victim}"
            good = plain.getbytes(key)
            raw = bytearray(good)
            raw[-1 - 4321] ^= 0x08
            plain.setbytes(key, bytes(raw))
            with pytest.raises(DataLossError, match=f"checksum mismatch in tensor '{victim}'"):
                for _ in c.weight_iterator(batch_bytes=BATCH):
                    pass
            plain.setbytes(key, good)
        # Put right, it loads intact into shared memory again.
        shared, large = stream(c, sd)
        assert shared >= large * 3 // 4, (shared, large)


def test_concurrent_streaming_loads_on_one_connector(saved):
    sd = saved
    errors: list[BaseException] = []
    with create_remote_connector(URL) as c:
        until_shared(c, sd)

        def loader() -> None:
            try:
                for _ in range(4):
                    stream(c, sd)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        def writer() -> None:
            try:
                for i in range(20):
                    t = random_tensor(torch.uint8, (3 << 20,), seed=100 + i)
                    c.set(f"side/{i}", t)
                    assert_bit_exact(c.get(f"side/{i}"), t)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=loader) for _ in range(3)] + [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads)
    assert not errors, errors


def test_client_killed_during_a_shared_memory_load(monkeypatch):
    """The mooncake_client (which holds the data) dies in the middle of a
    load into its shared memory: the load fails with an error, within
    bounds; tensors already handed out keep their bytes (the mapping is
    this process's own), and the connector closes."""
    from mooncake_connector import MooncakeConnectorError, standalone

    sd = state_dict()
    with standalone.start(segment_size="256mb", local_buffer_size="64mb", lease_ttl_ms=500) as inst:
        for k, v in inst.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("MOONCAKE_CLIENT", raising=False)
        with create_remote_connector(URL) as c:
            c.save_state_dict(sd)
        monkeypatch.setenv("MOONCAKE_CLIENT", inst.client_address)
        monkeypatch.setenv("MOONCAKE_OP_TIMEOUT", "2s")
        c = create_remote_connector(URL)
        until_shared(c, sd)
        held = []
        start = time.monotonic()
        with pytest.raises(MooncakeConnectorError):
            for name, t in c.weight_iterator(batch_bytes=BATCH):
                held.append((name, t))
                if len(held) == 1:
                    inst.processes[-1].kill()  # the mooncake_client
                    inst.processes[-1].wait()
        assert time.monotonic() - start < 60
        assert held and in_shared(held[0][1], shared_ranges())
        for name, t in held:
            assert_bit_exact(t, sd[name])
        c.close()
        for name, t in held:
            assert_bit_exact(t, sd[name])
