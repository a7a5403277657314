"""Errors: each failure raises the documented exception class, which is also
the matching builtin and a MooncakeConnectorError, with a useful message."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

import mooncake_connector as mc
from mooncake_connector import (
    DataLossError,
    InvalidArgumentError,
    MooncakeConnectorError,
    create_remote_connector,
)


def test_unknown_scheme_lists_supported():
    with pytest.raises(InvalidArgumentError) as info:
        create_remote_connector("s3://x")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MooncakeConnectorError)
    assert "memory://" in str(info.value)
    assert "s3" in str(info.value)


def test_supported_schemes():
    assert "memory" in mc.supported_schemes()


@pytest.mark.parametrize("url", [
    "nourl", "", "memory:/x", "://x", "1abc://x", "memory://host:99999", "memory://host:0",
    "memory://host:", "memory://host:12ab", "memory://x?capacity=1kb&capacity=2kb",
    "memory://x/%zz", "memory://[::1",
])
def test_malformed_url(url):
    with pytest.raises(ValueError) as info:
        create_remote_connector(url)
    assert isinstance(info.value, MooncakeConnectorError)


def test_memory_url_with_port_rejected():
    with pytest.raises(InvalidArgumentError):
        create_remote_connector(f"memory://n{uuid.uuid4().hex}:8080")


def test_unknown_option_named():
    with pytest.raises(InvalidArgumentError) as info:
        create_remote_connector(f"memory://{uuid.uuid4().hex}", bogus_option=1)
    assert isinstance(info.value, ValueError)
    assert "bogus_option" in str(info.value)


def test_unknown_query_option_named():
    with pytest.raises(ValueError, match="frobnicate"):
        create_remote_connector(f"memory://{uuid.uuid4().hex}?frobnicate=yes")


@pytest.mark.parametrize("capacity", ["lots", "-5", "1zb", ""])
def test_bad_capacity(capacity):
    with pytest.raises(InvalidArgumentError):
        create_remote_connector(f"memory://{uuid.uuid4().hex}", capacity=capacity)


def test_capacity_via_query_string():
    c = create_remote_connector(f"memory://{uuid.uuid4().hex}?capacity=100b")
    try:
        with pytest.raises(MemoryError):
            c.set("k", torch.zeros(64))
    finally:
        c.close()


@pytest.mark.parametrize("device", ["tpu", "cuda:x", torch.device("meta")])
def test_unsupported_device(device):
    with pytest.raises(ValueError) as info:
        create_remote_connector(f"memory://{uuid.uuid4().hex}", device=device)
    assert isinstance(info.value, MooncakeConnectorError)


@pytest.mark.parametrize("value", [b"bytes", 1, None, ["a"], torch.zeros(1)])
def test_setstr_needs_str(conn, value):
    with pytest.raises(TypeError):
        conn.setstr("k", value)
    assert conn.exists("k") is False


@pytest.mark.parametrize("value", ["text", [1, 2], b"raw", None, 3.0])
def test_set_needs_tensor(conn, value):
    with pytest.raises(TypeError):
        conn.set("k", value)
    assert conn.exists("k") is False


def test_set_unsupported_dtype(conn):
    with pytest.raises(ValueError):
        conn.set("k", torch.zeros(2, dtype=torch.complex64))
    assert conn.exists("k") is False


@pytest.mark.parametrize("tensor", [
    torch.full((4,), 255, dtype=torch.uint8),
    torch.randn(64, 64),
    torch.zeros(4, dtype=torch.uint8),  # every byte of the value is ASCII
    torch.empty(0),
], ids=["ff_bytes", "randn", "ascii_bytes", "empty"])
def test_getstr_on_tensor_is_data_loss(conn, tensor):
    conn.set("t", tensor)
    with pytest.raises(DataLossError) as info:
        conn.getstr("t")
    assert isinstance(info.value, ValueError)
    assert "t" in str(info.value)


@pytest.mark.parametrize("text", ["", "hello", "x" * 1000, "日本語" * 50, '{"tensor_bytes": 1}'])
def test_get_on_string_is_data_loss(conn, text):
    conn.setstr("s", text)
    with pytest.raises(DataLossError) as info:
        conn.get("s")
    assert isinstance(info.value, ValueError)
    assert "'s'" in str(info.value)
    assert conn.getstr("s") == text  # the failed get changed nothing


@pytest.mark.parametrize("call", [
    lambda c: c.get(""), lambda c: c.getstr(""), lambda c: c.set("", torch.zeros(1)),
    lambda c: c.setstr("", "v"), lambda c: c.exists(""), lambda c: c.remove(""),
], ids=["get", "getstr", "set", "setstr", "exists", "remove"])
def test_empty_key(conn, call):
    with pytest.raises(ValueError) as info:
        call(conn)
    assert isinstance(info.value, InvalidArgumentError)


def test_errors_hierarchy():
    builtin = {
        mc.NotFoundError: KeyError, mc.InvalidArgumentError: ValueError,
        mc.UnavailableError: ConnectionError, mc.DeadlineExceededError: TimeoutError,
        mc.AlreadyExistsError: FileExistsError, mc.DataLossError: ValueError,
        mc.ResourceExhaustedError: MemoryError, mc.InternalError: RuntimeError,
        mc.UnimplementedError: NotImplementedError,
        mc.FailedPreconditionError: RuntimeError, mc.AbortedError: RuntimeError,
    }
    for cls, base in builtin.items():
        assert issubclass(cls, MooncakeConnectorError)
        assert issubclass(cls, base)
    assert str(mc.NotFoundError("no such key")) == "no such key"


def test_numpy_object_array_rejected(conn):
    with pytest.raises((TypeError, ValueError)):
        conn.set("k", np.array(["a", "b"], dtype=object))
    assert conn.exists("k") is False


def test_exception_table_matches_the_cpp_status_codes():
    from mooncake_connector import _errors, _impl

    codes = _impl.status_codes()
    assert codes["OK"] == 0
    assert len(_errors._BY_CODE) == len(codes), "a StatusCode has no Python exception class"
    for name, value in codes.items():
        if value:
            assert _errors._BY_CODE[value].code == name, name
