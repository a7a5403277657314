"""mooncake:// never returns wrong bytes and never drops a stored value: one
test per way it was seen to fail (chunk-size mismatches, planted hostile
headers and chunks, a failed overwrite on a full pool, orphans, a header
claiming a million chunks), against a real master and storage process.
Hostile and foreign objects are planted with the raw wheel from another
process (raw_wheel.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import struct
import time
import urllib.request

import pytest

import raw_wheel
from conftest import clear_mooncake, export
from mooncake_connector import (
    DataLossError,
    ResourceExhaustedError,
    create_remote_connector,
    standalone,
)

pytestmark = pytest.mark.usefixtures("mooncake_cluster")

MiB = 1 << 20
MAGIC = b"\x89MCCHNK\n"


def header_v1(total: int, chunk: int, generation: int, chunks: int | None = None) -> bytes:
    n = chunks if chunks is not None else (0 if total == 0 else (total - 1) // chunk + 1)
    return struct.pack("<8sIIQQQQ16x", MAGIC, 1, 0, total, chunk, n, generation)


@functools.cache
def _libxxhash() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0")
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return lib


def xxh3(data: bytes) -> int:
    """XXH3-64, seed 0, from Debian's libxxhash (installed with libxxhash-dev)."""
    return _libxxhash().XXH3_64bits(data, len(data))


def checksum_in_pieces(value: bytes, head: int, piece: int) -> int:
    """A version-3 header's value checksum, as docs/mooncake_layout.md says."""
    pieces = [value[:head]] if head > 0 else []
    at = len(pieces[0]) if pieces else 0
    while at < len(value):
        pieces.append(value[at:at + piece])
        at += len(pieces[-1])
    if len(pieces) <= 1:
        return xxh3(value)
    return xxh3(b"".join(struct.pack("<Q", xxh3(p)) for p in pieces))


def sealed_header(version: int, total: int, chunk: int, field32: int, generation: int, checksum: int) -> bytes:
    """A version-2 (field32: the number of chunks) or version-3 (field32: the
    checksum's head) header with its own checksum."""
    body = struct.pack("<8sIIQQQQQ", MAGIC, version, 0, total, chunk, field32, generation, checksum)
    return body + struct.pack("<Q", xxh3(body))


def chunk_key(key: str, generation: int, index: int) -> str:
    return f"{key}\x1f{generation:016x}.{index}"


def all_raw_keys(inst) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{inst.metrics_port}/get_all_keys") as r:
        return [k for k in r.read().decode().split("\n") if k]


def objects_of(inst, key: str) -> list[str]:
    return [k for k in all_raw_keys(inst) if k == key or k.startswith(key + "\x1f")]


def plant(tmp_path, objects: dict[str, bytes]) -> None:
    ops = []
    for i, (key, data) in enumerate(objects.items()):
        f = tmp_path / f"obj{i}"
        f.write_bytes(data)
        ops.append({"put": key, "file": str(f)})
    assert raw_wheel.run(ops, tmp_path) == [0] * len(ops)


@pytest.fixture
def mc():
    clear_mooncake()
    with create_remote_connector("mooncake://") as c:
        yield c


@pytest.mark.parametrize("writer,reader", [
    ("chunk_size=32mb", "chunk_size=16mb"),
    ("chunk_size=16mb", "chunk_size=32mb"),
    ("chunk_size=1mb", "chunk_size=64kb&transfer_slots=1"),
    ("chunk_size=64kb", "chunk_size=1mb&transfer_slots=1"),
])
def test_chunk_size_mismatch_reads_exact_bytes(mc, writer, reader):
    data = os.urandom(40 * MiB + 12345)
    with create_remote_connector(f"mooncake://?{writer}") as w, \
            create_remote_connector(f"mooncake://?{reader}") as r:
        w.setbytes("mismatch/v", data)
        assert r.getbytes("mismatch/v") == data
        small = os.urandom(3 * MiB + 7)
        r.setbytes("mismatch/v", small)  # overwrite across configurations
        assert w.getbytes("mismatch/v") == small
        assert r.getbytes("mismatch/v") == small


def test_planted_header_with_chunk_above_slot_size_reads_without_crash(mc, tmp_path):
    gen = 0xC0FFEE
    chunk = os.urandom(32 * MiB)
    plant(tmp_path, {"planted/big": header_v1(32 * MiB, 32 * MiB, gen),
                     chunk_key("planted/big", gen, 0): chunk})
    assert mc.getbytes("planted/big") == chunk  # a valid version-1 value


def test_values_of_layout_versions_2_and_3_written_by_hand_read_back(mc, tmp_path):
    """Headers built here from the layout's spec, not by the connector: a
    version-2 value (the whole value's XXH3, as the release before wrote
    them) and version-3 values (the checksum in 1 MiB pieces after a head of
    1000 bytes, and after none) read back; a version-3 header carrying the
    whole value's XXH3 where its pieces' belong is DataLoss."""
    value = os.urandom(2 * MiB + 4321)
    chunks = [value[i:i + MiB] for i in range(0, len(value), MiB)]
    cases = {
        "layout/v2": sealed_header(2, len(value), MiB, len(chunks), 0x2, xxh3(value)),
        "layout/v3-head": sealed_header(3, len(value), MiB, 1000, 0x3, checksum_in_pieces(value, 1000, MiB)),
        "layout/v3": sealed_header(3, len(value), MiB, 0, 0x4, checksum_in_pieces(value, 0, MiB)),
        "layout/v3-wrong-kind": sealed_header(3, len(value), MiB, 1000, 0x5, xxh3(value)),
    }
    objects = dict(cases)
    for (key, header), generation in zip(cases.items(), (0x2, 0x3, 0x4, 0x5)):
        for i, c in enumerate(chunks):
            objects[chunk_key(key, generation, i)] = c
    plant(tmp_path, objects)
    assert checksum_in_pieces(value, 1000, MiB) != xxh3(value)
    for key in ("layout/v2", "layout/v3-head", "layout/v3"):
        assert mc.getbytes(key) == value, key
    with pytest.raises(DataLossError, match="checksum mismatch"):
        mc.getbytes("layout/v3-wrong-kind")


def test_planted_chunk_longer_than_its_header_says_is_data_loss(mc, tmp_path):
    gen = 0xBAD
    plant(tmp_path, {"planted/long": header_v1(2 * MiB, 1 * MiB, gen),
                     chunk_key("planted/long", gen, 0): os.urandom(MiB),
                     chunk_key("planted/long", gen, 1): os.urandom(MiB + 4096)})
    with pytest.raises(DataLossError):
        mc.getbytes("planted/long")


def test_planted_header_without_chunks_is_data_loss_quickly(mc, tmp_path):
    plant(tmp_path, {"planted/empty": header_v1(3 * MiB, MiB, 0x77)})
    t = time.monotonic()
    with pytest.raises(DataLossError, match="gone"):
        mc.getbytes("planted/empty")
    assert time.monotonic() - t < 5


def test_planted_corrupt_headers_are_data_loss(mc, tmp_path):
    bad_version = bytearray(header_v1(MiB, MiB, 1))
    bad_version[8] = 9
    wrong_count = header_v1(3 * MiB, MiB, 1, chunks=5)
    plant(tmp_path, {"planted/v9": bytes(bad_version), "planted/count": wrong_count})
    for key in ("planted/v9", "planted/count"):
        with pytest.raises(DataLossError, match="header"):
            mc.getbytes(key)
    # They are overwritten and removed like any value.
    mc.setbytes("planted/v9", b"fine now")
    assert mc.getbytes("planted/v9") == b"fine now"
    assert mc.remove("planted/count")


def test_header_claiming_a_million_chunks_costs_bounded_work(mc, tmp_path, mooncake_cluster):
    n = 1 << 20
    plant(tmp_path, {"planted/huge": header_v1(n * 4096, 4096, 0x99)})
    t = time.monotonic()
    with pytest.raises(DataLossError):
        mc.getbytes("planted/huge")
    mc.setbytes("planted/huge", b"replaced")
    assert mc.getbytes("planted/huge") == b"replaced"
    assert mc.remove("planted/huge")
    assert time.monotonic() - t < 15
    assert objects_of(mooncake_cluster, "planted/huge") == []


def test_corrupted_chunk_is_data_loss_not_wrong_bytes(mc, tmp_path):
    data = os.urandom(3 * MiB)
    with create_remote_connector("mooncake://?chunk_size=1mb") as c:
        c.setbytes("corrupt/v", data)
        keys = [k for k in all_raw_keys_of_cluster() if k.startswith("corrupt/v\x1f")]
        assert len(keys) == 3
        f = tmp_path / "junk"
        f.write_bytes(os.urandom(MiB))
        assert raw_wheel.run([{"upsert": sorted(keys)[1], "file": str(f)}], tmp_path) == [0]
        with pytest.raises(DataLossError, match="checksum"):
            c.getbytes("corrupt/v")


def all_raw_keys_of_cluster() -> list[str]:
    port = os.environ["MOONCAKE_MASTER_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/get_all_keys") as r:
        return [k for k in r.read().decode().split("\n") if k]


def test_raw_values_stay_readable_by_the_raw_wheel(mc, tmp_path):
    data = os.urandom(5000)
    mc.setbytes("interop/raw", data)
    out = tmp_path / "out"
    assert raw_wheel.run([{"get": "interop/raw", "file": str(out), "size": 1 << 16}], tmp_path) == [5000]
    assert out.read_bytes() == data


def test_overwrite_and_remove_leave_no_objects(mc, mooncake_cluster):
    for i, size in enumerate([100, 5 * MiB, 0, 64, 20 * MiB, 7, 40 * MiB, 1]):
        mc.setbytes("orphans/k", bytes([i]) * size)
        assert mc.getbytes("orphans/k") == bytes([i]) * size
    time.sleep(0.6)  # leases of the reads above
    mc.setbytes("orphans/k", b"last")  # retries the superseded chunks
    assert mc.remove("orphans/k")
    assert objects_of(mooncake_cluster, "orphans/k") == []


@pytest.fixture
def full_pool(tmp_path, monkeypatch):
    """A private instance with a small pool, and a hard-pinning connector."""
    with standalone.start(segment_size="64mb", local_buffer_size="16mb", lease_ttl_ms=300,
                          log_dir=str(tmp_path / "logs")) as inst:
        export(monkeypatch, inst)
        with create_remote_connector("mooncake://?pin=hard&chunk_size=1mb") as c:
            yield inst, c


def fill(c, prefix: str) -> int:
    """Hard-pinned values until not even 4 KiB more fits."""
    n = 0
    for size in (4 * MiB, 256 * 1024, 16 * 1024, 4096 + 1, 1025, 65):
        while True:
            try:
                c.setbytes(f"{prefix}{n}", os.urandom(size))
                n += 1
            except ResourceExhaustedError:
                break
    return n


def test_failed_overwrite_on_full_pool_keeps_old_value(full_pool):
    inst, c = full_pool
    small, chunked = os.urandom(100_000), os.urandom(3 * MiB + 5)
    c.setbytes("keep/raw", small)
    c.setbytes("keep/chunked", chunked)
    assert fill(c, "filler/") > 0
    for key, old in (("keep/raw", small), ("keep/chunked", chunked)):
        for new in (os.urandom(len(old)), os.urandom(2 * MiB)):
            with pytest.raises(ResourceExhaustedError):
                c.setbytes(key, new)
            assert c.getbytes(key) == old
        # A tiny value may still fit in what the fill left: then it replaced
        # the old one whole; otherwise the old one is intact.
        tiny = os.urandom(10)
        try:
            c.setbytes(key, tiny)
            assert c.getbytes(key) == tiny
        except ResourceExhaustedError:
            assert c.getbytes(key) == old
    # With room again the overwrite goes through, and nothing is left behind.
    for k in c.list("filler/")[:8]:
        assert c.remove(k)
    c.setbytes("keep/raw", b"new value")
    assert c.getbytes("keep/raw") == b"new value"
    assert c.remove("keep/raw")
    assert objects_of(inst, "keep/raw") == []


@pytest.mark.parametrize("direct", ["1", "0"])
def test_damaged_tensors_fail_every_load_path_read_directly_or_staged(mc, tmp_path, direct):
    """Tensors of 1 MiB and more are transferred straight into their
    destination (direct_transfers=1, the default) or through the staging slots:
    either way a tensor whose bytes changed fails every load path with
    DataLossError, and so does one whose chunk has another size."""
    import torch

    sd = {"raw": torch.randn(768, 1024).to(torch.bfloat16),       # 1.5 MiB: one raw object
          "chunked": torch.randn(1536, 1024).to(torch.bfloat16)}  # 3 MiB: a header and two 2 MiB chunks
    model = f"damaged/d{direct}"
    with create_remote_connector(f"mooncake:///{model}?chunk_size=2mb&direct_transfers={direct}") as c:
        c.save_state_dict(sd)
        dest = {n: torch.empty_like(t) for n, t in sd.items()}
        c.load_into(dest)
        assert all(torch.equal(dest[n], t) for n, t in sd.items())
        raw_key, chunked_key = f"{model}/keys/rank_0/raw", f"{model}/keys/rank_0/chunked"
        chunks = sorted(k for k in all_raw_keys_of_cluster() if k.startswith(chunked_key + "\x1f")
                        and not k.endswith(".r"))
        assert len(chunks) == 2, chunks
        original_raw = c.getbytes(raw_key)

        def upsert(key: str, data: bytes) -> None:
            f = tmp_path / "junk"
            f.write_bytes(data)
            assert raw_wheel.run([{"upsert": key, "file": str(f)}], tmp_path) == [0]

        def loads(verify: bool = True):
            return [lambda: c.load_into({n: torch.empty_like(t) for n, t in sd.items()}, verify=verify),
                    lambda: c.load_state_dict(verify=verify),
                    lambda: list(c.weight_iterator(verify=verify))]

        flipped = bytearray(original_raw)
        flipped[-1000] ^= 0x40  # a byte of the tensor's data, its header intact
        upsert(raw_key, bytes(flipped))
        for load in loads():
            with pytest.raises(DataLossError, match="checksum mismatch in tensor 'raw'"):
                load()
        upsert(raw_key, original_raw)

        second = os.urandom(len(c.getbytes(chunked_key)) - 2 * MiB)  # the second chunk's size, other bytes
        upsert(chunks[1], second)
        for load in loads() + loads(verify=False):  # without verify the value's own checksum
            with pytest.raises(DataLossError, match="checksum"):
                load()
        upsert(chunks[1], second[:4096])  # a chunk shorter than its header says
        for load in loads():
            with pytest.raises(DataLossError, match="'chunked'"):
                load()
