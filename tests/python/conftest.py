"""Shared fixtures. Named memory stores are shared by the whole process while
any connector holds them open, so every test gets a store of its own."""

from __future__ import annotations

import uuid

import pytest
import torch

from mooncake_connector import create_remote_connector


@pytest.fixture
def store_url() -> str:
    """A memory:// URL that no other test uses."""
    return f"memory://t{uuid.uuid4().hex}"


@pytest.fixture
def conn(store_url):
    """An open connector on a private memory store; closed after the test."""
    c = create_remote_connector(store_url, device="cpu")
    yield c
    c.close()


def raw_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes in row-major order, as a flat uint8 tensor."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_bit_exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert isinstance(actual, torch.Tensor)
    assert actual.dtype == expected.dtype
    assert tuple(actual.shape) == tuple(expected.shape)
    assert actual.device.type == "cpu"
    assert torch.equal(raw_bytes(actual), raw_bytes(expected))


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A tensor of random bits (for bool: random 0/1)."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for d in shape:
        n *= d
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g, dtype=torch.uint8).view(torch.bool).reshape(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    bits = torch.randint(0, 256, (n * itemsize,), generator=g, dtype=torch.uint8)
    return bits.view(dtype).reshape(shape)
