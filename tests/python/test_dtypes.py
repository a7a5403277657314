"""Every supported dtype x a range of shapes round-trips bit-exactly."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_bit_exact, random_tensor

DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.uint16, torch.int16, torch.uint32, torch.int32,
    torch.uint64, torch.int64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.float8_e4m3fn, torch.float8_e5m2,
]
SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 3, 4), (1, 1, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)) or "scalar")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_round_trip(conn, dtype, shape):
    t = random_tensor(dtype, shape, seed=DTYPES.index(dtype) * 100 + SHAPES.index(shape))
    conn.set("k", t)
    out = conn.get("k")
    assert_bit_exact(out, t)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_all_byte_values_survive(conn, dtype):
    """Every byte 0..255 in every position of an item (NaN payloads, -0.0,
    denormals, fp8 specials) comes back unchanged."""
    if dtype == torch.bool:
        t = torch.tensor([True, False, False, True])
    else:
        itemsize = torch.empty((), dtype=dtype).element_size()
        t = torch.arange(256, dtype=torch.uint8).repeat(itemsize).view(dtype)
    conn.set("all", t)
    assert_bit_exact(conn.get("all"), t)


def test_bool_values(conn):
    t = torch.tensor([[True, False, True], [False, False, True]])
    conn.set("b", t)
    out = conn.get("b")
    assert out.dtype == torch.bool
    assert out.tolist() == [[True, False, True], [False, False, True]]


EXACT = [
    (torch.float32, [0.0, -0.0, 1.5, float("inf"), float("-inf"), 3.4028234663852886e38]),
    (torch.float64, [1e-310, -2.5, 1.7976931348623157e308]),
    (torch.bfloat16, [1.0, -2.0, 0.5, 65280.0]),
    (torch.float16, [65504.0, -0.0, 6.103515625e-05]),
    (torch.float8_e4m3fn, [448.0, -448.0, 0.015625]),
    (torch.float8_e5m2, [57344.0, -1.0, 0.5]),
    (torch.int64, [-(2**63), 2**63 - 1, 0]),
    (torch.uint64, [0, 2**63, 2**64 - 1]),
    (torch.uint32, [0, 2**32 - 1]),
    (torch.int8, [-128, 127]),
]


@pytest.mark.parametrize("dtype,values", EXACT, ids=[str(d).removeprefix("torch.") for d, _ in EXACT])
def test_exact_values(conn, dtype, values):
    t = torch.tensor(values, dtype=dtype)
    conn.set("v", t)
    out = conn.get("v")
    assert out.dtype == dtype
    assert out.tolist() == t.tolist()
    assert_bit_exact(out, t)


def test_large_tensor(conn):
    t = random_tensor(torch.bfloat16, (1024, 4099), seed=9)
    conn.set("big", t)
    assert_bit_exact(conn.get("big"), t)
