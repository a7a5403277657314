"""Shared fixtures.

Every test that takes ``store_url`` or ``conn`` runs twice: on a private
``memory://`` store, and on ``mooncake://`` against a real Mooncake master and
storage process (from the mooncake-transfer-engine wheel) started once per
session on loopback. The mooncake store is emptied before each test. A missing
wheel or master fails the session; nothing is skipped.
"""

from __future__ import annotations

import uuid

import pytest
import torch

from mooncake_connector import create_remote_connector, standalone


# Read leases of the session's master: short, as in Mooncake's own CI, since
# removes (never forced) wait them out.
LEASE_TTL_MS = 500


@pytest.fixture(scope="session")
def mooncake_cluster():
    """A standalone Mooncake instance; its client environment is exported
    for the whole session (this process is a pure client)."""
    with standalone.start(segment_size="2gb", local_buffer_size="64mb",
                          lease_ttl_ms=LEASE_TTL_MS) as inst, \
            pytest.MonkeyPatch.context() as env:
        export(env, inst)
        # Held for the session: connectors with this configuration share its
        # Mooncake client instead of setting up one each.
        with create_remote_connector("mooncake://"):
            yield inst


def export(env: pytest.MonkeyPatch, inst: standalone.StandaloneInstance) -> None:
    """Points this process's clients at `inst` until `env` is undone."""
    for k, v in inst.env().items():
        env.setenv(k, v)


def clear_mooncake() -> None:
    with create_remote_connector("mooncake://") as c:
        for key in c.list(""):
            c.remove(key)


@pytest.fixture(params=["memory", "mooncake"])
def store_url(request) -> str:
    """A URL whose store holds nothing: a private memory store, or the
    session's Mooncake cluster after emptying it."""
    if request.param == "memory":
        return f"memory://t{uuid.uuid4().hex}"
    request.getfixturevalue("mooncake_cluster")
    clear_mooncake()
    return "mooncake://"


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
