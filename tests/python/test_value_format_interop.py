# The "codec" tests use the raw-bytes functions of the private extension module
# mooncake_connector._impl:
#   encode_tensor(data: np.ndarray[uint8], dtype: str, shape: list[int]) -> bytes
#   decode_tensor(blob: bytes) -> tuple[np.ndarray[uint8], str, list[int]]
# (decode raises DataLossError for malformed input). The "store" tests need no
# private API: a blob goes into the store unchanged by setbytes and is then
# read with get.
"""The value format is safetensors with one tensor named "tensor_bytes":
blobs interoperate with safetensors.torch in both directions, and hostile
blobs are rejected with DataLossError."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.torch
import torch

from conftest import assert_bit_exact, random_tensor, raw_bytes
from mooncake_connector import DataLossError, MooncakeConnectorError, _impl

NAMES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.uint16: "U16",
    torch.int16: "I16", torch.uint32: "U32", torch.int32: "I32", torch.uint64: "U64",
    torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
    torch.float64: "F64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
DTYPES = {name: dtype for dtype, name in NAMES.items()}


def encode(t: torch.Tensor) -> bytes:
    return bytes(_impl.encode_tensor(raw_bytes(t).numpy(), NAMES[t.dtype], list(t.shape)))


def decode(blob: bytes) -> torch.Tensor:
    data, name, shape = _impl.decode_tensor(blob)
    assert isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1
    raw = torch.empty(data.size, dtype=torch.uint8)  # a private copy, unit stride even if empty
    raw.numpy()[:] = data
    return raw.view(DTYPES[name]).reshape(list(shape))


def blob(header, data: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def entry(dtype="U8", shape=(4,), offsets=(0, 4)) -> dict:
    return {"tensor_bytes": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}


CASES = [  # (dtype, shape)
    (torch.bfloat16, (3, 5)), (torch.float8_e4m3fn, (2, 3, 4)), (torch.float8_e5m2, (7,)),
    (torch.bool, (9,)), (torch.float32, ()), (torch.float16, (3, 0, 2)), (torch.int64, (0,)),
    (torch.uint16, (5,)), (torch.uint32, (2, 2)), (torch.uint64, (3,)), (torch.int8, (1, 1, 1, 1)),
    (torch.float64, (4, 3)), (torch.int32, (6,)), (torch.int16, (2, 5)), (torch.uint8, (33,)),
]
IDS = [f"{NAMES[d]}-{'x'.join(map(str, s)) or 'scalar'}" for d, s in CASES]


@pytest.mark.parametrize("dtype,shape", CASES, ids=IDS)
def test_safetensors_blob_decodes(dtype, shape):
    t = random_tensor(dtype, shape, seed=len(shape) * 31 + dtype.itemsize)
    out = decode(safetensors.torch.save({"tensor_bytes": t}))
    assert_bit_exact(out, t)


@pytest.mark.parametrize("dtype,shape", CASES, ids=IDS)
def test_our_blob_loads_in_safetensors(dtype, shape):
    t = random_tensor(dtype, shape, seed=len(shape) * 17 + dtype.itemsize)
    encoded = encode(t)
    loaded = safetensors.torch.load(encoded)
    assert list(loaded) == ["tensor_bytes"]
    assert_bit_exact(loaded["tensor_bytes"], t)
    assert_bit_exact(decode(encoded), t)


@pytest.mark.parametrize("dtype,shape", CASES, ids=IDS)
def test_our_blob_layout(dtype, shape):
    t = random_tensor(dtype, shape)
    encoded = encode(t)
    (header_len,) = struct.unpack("<Q", encoded[:8])
    assert (8 + header_len) % 64 == 0
    nbytes = t.numel() * t.element_size()
    assert len(encoded) == 8 + header_len + nbytes
    assert encoded[8 + header_len:] == raw_bytes(t).numpy().tobytes()
    header = json.loads(encoded[8:8 + header_len])
    assert header["tensor_bytes"] == {"dtype": NAMES[dtype], "shape": list(shape),
                                      "data_offsets": [0, nbytes]}


STORE_CASES = [torch.uint8, torch.int8, torch.bool, torch.int32, torch.bfloat16,
               torch.float8_e4m3fn, torch.float16, torch.int64]


@pytest.mark.parametrize("dtype", STORE_CASES, ids=lambda d: NAMES[d])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4)], ids=["scalar", "empty", "1d", "3d"])
def test_safetensors_blob_via_store(conn, dtype, shape):
    """A safetensors.torch.save blob put into the store byte for byte decodes
    through get."""
    n = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    bits = torch.randint(0, 2 if dtype == torch.bool else 256, (n,), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(n))
    t = bits.view(dtype).reshape(shape)
    raw = safetensors.torch.save({"tensor_bytes": t})
    conn.setbytes("st", raw)
    assert_bit_exact(conn.get("st"), t)


def test_metadata_and_extra_tensors_accepted(conn):
    t = torch.arange(6, dtype=torch.int16).reshape(2, 3)
    raw = safetensors.torch.save({"a_first": torch.arange(3, dtype=torch.uint8),
                                  "tensor_bytes": t, "z_last": torch.tensor(True)},
                                 metadata={"format": "pt", "note": "ünïcode"})
    assert_bit_exact(decode(raw), t)
    hdr = {"__metadata__": {"format": "pt"}, **entry("U8", (2, 2), (0, 4))}
    conn.setbytes("m", blob(hdr, b"abcd"))
    assert conn.get("m").tolist() == [[97, 98], [99, 100]]


BAD = {  # name -> (blob, word the message must contain)
    "empty": (b"", "short"),
    "seven_bytes": (b"\x00" * 7, "short"),
    "header_len_zero": (struct.pack("<Q", 0) + b"{}", "{"),
    "header_past_end": (struct.pack("<Q", 100) + b'{"a": 1}', "truncated"),
    "header_len_over_limit": (struct.pack("<Q", 100_000_001) + b"{}", "limit"),
    "header_len_huge_ascii": (b"\x7f" * 8 + b"{}", "limit"),
    "not_json": (blob(b"{not json}"), "json"),
    "not_object": (blob(b"[1, 2, 3]"), "{"),
    "string_header": (blob(b'"{}"'), "{"),
    "leading_space": (blob(b" " + json.dumps(entry()).encode(), b"abcd"), "{"),
    "bad_utf8_in_json": (blob(b'{"\xff": 1}'), "json"),
    "unknown_dtype": (blob(entry("F4"), b"abcd"), "f4"),
    "dtype_not_string": (blob(entry(5), b"abcd"), "dtype"),
    "size_mismatch": (blob(entry("U8", (2, 2), (0, 3)), b"abc"), "size"),
    "offsets_out_of_bounds": (blob(entry("U8", (8,), (0, 8)), b"abcd"), "truncated"),
    "reversed_offsets": (blob(entry("U8", (4,), (4, 0)), b"abcd"), "reversed"),
    "offsets_not_pair": (blob(entry("U8", (4,), (0,)), b"abcd"), "data_offsets"),
    "truncated_data": (blob(entry("F32", (4,), (0, 16)), b"\x00" * 9), "truncated"),
    "trailing_bytes": (blob(entry(), b"abcdXY"), "trailing"),
    "hole_before_data": (blob(entry("U8", (4,), (2, 6)), b"abcdef"), "start"),
    "missing_tensor_bytes": (blob({"other": entry()["tensor_bytes"]}, b"abcd"), "tensor_bytes"),
    "entry_not_object": (blob({"tensor_bytes": 3}), "object"),
    "negative_dim": (blob(entry("U8", (-4,), (0, 4)), b"abcd"), "dimension"),
    "float_dim": (blob(b'{"tensor_bytes": {"dtype": "U8", "shape": [4.0], '
                       b'"data_offsets": [0, 4]}}', b"abcd"), "dimension"),
    "deep_nesting": (blob(b'{"a":' * 10000), "deep"),
    "deep_nesting_closed": (blob(b'{"a":' * 10000 + b"1" + b"}" * 10000), "deep"),
    "metadata_non_string": (blob({"__metadata__": {"k": 1}, **entry()}, b"abcd"), "__metadata__"),
    "metadata_not_object": (blob({"__metadata__": "x", **entry()}, b"abcd"), "__metadata__"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_hostile_blob_codec(name):
    raw, word = BAD[name]
    with pytest.raises(DataLossError) as info:
        decode(raw)
    assert isinstance(info.value, ValueError) and isinstance(info.value, MooncakeConnectorError)
    assert word.lower() in str(info.value).lower()


@pytest.mark.parametrize("name", list(BAD))
def test_hostile_blob_via_store(conn, name):
    raw, word = BAD[name]
    conn.setbytes("bad", raw)
    with pytest.raises(DataLossError) as info:
        conn.get("bad")
    assert isinstance(info.value, ValueError)
    assert word.lower() in str(info.value).lower()
    assert "bad" in str(info.value)


def test_header_over_limit_even_when_present():
    """A header longer than 100,000,000 bytes is refused even if the blob
    really holds that many bytes."""
    n = 100_000_001
    raw = struct.pack("<Q", n) + b"{" + b" " * (n - 2) + b"}"
    with pytest.raises(DataLossError, match="limit"):
        decode(raw)


def test_valid_minimal_blob():
    assert decode(blob(entry(), b"abcd")).tolist() == [97, 98, 99, 100]
    padded = json.dumps(entry()).encode() + b"     "
    assert decode(blob(padded, b"abcd")).tolist() == [97, 98, 99, 100]
