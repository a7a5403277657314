"""The BaseKVConnector API over memory://: set/get, setstr/getstr, list,
exists, remove, the local dir, closing, sharing, inputs and outputs."""

from __future__ import annotations

import gc
import os
import threading
import uuid
import warnings

import numpy as np
import pytest
import torch

from conftest import assert_bit_exact, random_tensor
from mooncake_connector import (
    FailedPreconditionError,
    InvalidArgumentError,
    MooncakeConnectorError,
    ResourceExhaustedError,
    create_remote_connector,
)


def test_set_get_tensor(conn):
    t = torch.randn(4, 5)
    assert conn.set("w", t) is None
    assert_bit_exact(conn.get("w"), t)


@pytest.mark.parametrize("text", [
    "", "hello", '{"hidden_size": 1024}', "héllo wörld", "日本語のテキスト", "emoji 🦀🚀",
    "mixed ñ ß 中 \U0010FFFF", "nul\x00inside", "x" * 100_000,
])
def test_setstr_getstr(conn, text):
    assert conn.setstr("s", text) is None
    assert conn.getstr("s") == text


def test_missing_key_is_none(conn):
    assert conn.get("nope") is None
    assert conn.getstr("nope") is None
    assert conn.exists("nope") is False


def test_set_overwrites_with_other_shape_and_dtype(conn):
    conn.set("k", torch.arange(6, dtype=torch.int64).reshape(2, 3))
    new = torch.tensor([1.5, -2.25], dtype=torch.float16)
    conn.set("k", new)
    assert_bit_exact(conn.get("k"), new)
    conn.setstr("k", "now text")
    assert conn.getstr("k") == "now text"
    conn.set("k", torch.ones(3, dtype=torch.bool))
    assert_bit_exact(conn.get("k"), torch.ones(3, dtype=torch.bool))


def test_list_is_sorted_and_filtered(conn):
    keys = ["b/2", "a/1", "b/10", "c", "b/1", "bb"]
    for k in keys:
        conn.setstr(k, k)
    assert conn.list() == sorted(keys)
    assert conn.list("") == sorted(keys)
    assert conn.list("b/") == ["b/1", "b/10", "b/2"]
    assert conn.list("b") == ["b/1", "b/10", "b/2", "bb"]
    assert conn.list("zzz") == []


def test_exists_and_remove(conn):
    conn.set("t", torch.zeros(2))
    conn.setstr("s", "v")
    assert conn.exists("t") and conn.exists("s")
    assert conn.remove("t") is True
    assert conn.remove("t") is False
    assert conn.exists("t") is False
    assert conn.get("t") is None
    assert conn.list() == ["s"]


def test_local_dir_is_deleted_by_close(store_url):
    c = create_remote_connector(store_url)
    d = c.get_local_dir()
    assert os.path.isdir(d)
    assert c.get_local_dir() == d
    with open(os.path.join(d, "f.txt"), "w") as f:
        f.write("data")
    os.mkdir(os.path.join(d, "sub"))
    c.close()
    assert not os.path.exists(d)


def test_context_manager_closes(store_url):
    with create_remote_connector(store_url) as c:
        c.setstr("k", "v")
        d = c.get_local_dir()
        assert not c.closed
    assert c.closed
    assert not os.path.exists(d)


@pytest.mark.parametrize("call", [
    lambda c: c.get("k"),
    lambda c: c.getstr("k"),
    lambda c: c.set("k", torch.zeros(1)),
    lambda c: c.setstr("k", "v"),
    lambda c: c.list(""),
    lambda c: c.exists("k"),
    lambda c: c.remove("k"),
    lambda c: c.get_local_dir(),
], ids=["get", "getstr", "set", "setstr", "list", "exists", "remove", "get_local_dir"])
def test_methods_after_close_raise(store_url, call):
    c = create_remote_connector(store_url)
    c.setstr("k", "v")
    c.close()
    c.close()  # idempotent
    with pytest.raises(FailedPreconditionError) as info:
        call(c)
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, MooncakeConnectorError)
    assert "closed" in str(info.value)


def test_same_name_shares_other_name_does_not():
    name = uuid.uuid4().hex
    a = create_remote_connector(f"memory://{name}")
    b = create_remote_connector(f"memory://{name}")
    other = create_remote_connector(f"memory://{name}x")
    try:
        t = torch.arange(10, dtype=torch.int32)
        a.set("shared", t)
        assert_bit_exact(b.get("shared"), t)
        b.setstr("from_b", "hi")
        assert a.getstr("from_b") == "hi"
        assert other.get("shared") is None
        assert other.list() == []
        assert b.remove("shared") is True
        assert a.exists("shared") is False
    finally:
        a.close(); b.close(); other.close()


def test_numpy_input_returns_torch(conn):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    conn.set("np", arr)
    out = conn.get("np")
    assert isinstance(out, torch.Tensor)
    assert_bit_exact(out, torch.from_numpy(arr))
    fortran = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    conn.set("f", fortran)
    assert_bit_exact(conn.get("f"), torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int16))


@pytest.mark.parametrize("make", [
    lambda: torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
    lambda: torch.arange(20, dtype=torch.int64)[::3],
    lambda: torch.arange(60, dtype=torch.int16).reshape(3, 4, 5)[:, 1:3, ::2],
    lambda: torch.arange(10, dtype=torch.float64).expand(3, 10),
    lambda: torch.arange(8, dtype=torch.uint8)[2:6],  # contiguous, storage offset
], ids=["transpose", "step", "slice3d", "expand", "offset"])
def test_non_contiguous_input(conn, make):
    t = make()
    conn.set("nc", t)
    out = conn.get("nc")
    assert out.shape == t.shape and out.dtype == t.dtype
    assert torch.equal(out, t)
    assert out.is_contiguous()


@pytest.mark.parametrize("t", [
    torch.tensor(3.5), torch.tensor(-7, dtype=torch.int64), torch.tensor(True),
    torch.empty(0), torch.empty(3, 0, 2, dtype=torch.bfloat16), torch.empty(0, dtype=torch.bool),
], ids=["0d_f32", "0d_i64", "0d_bool", "empty", "empty_3d", "empty_bool"])
def test_zero_dim_and_empty(conn, t):
    conn.set("x", t)
    assert_bit_exact(conn.get("x"), t)


def test_returned_tensor_is_private_and_writable(conn):
    t = torch.arange(8, dtype=torch.float32)
    conn.set("w", t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable array" warning
        out = conn.get("w")
    out.mul_(100)  # must not warn or fail: the tensor is writable
    out[0] = -1
    assert out[0].item() == -1
    assert_bit_exact(conn.get("w"), t)
    again = conn.get("w")
    again.zero_()
    assert_bit_exact(conn.get("w"), t)


def test_returned_tensor_outlives_connector(store_url):
    c = create_remote_connector(store_url)
    t = random_tensor(torch.float32, (256, 33), seed=5)
    c.set("w", t)
    out = c.get("w")
    c.close()
    assert_bit_exact(out, t)
    c2 = create_remote_connector(store_url)
    c2.set("w", t)
    out2 = c2.get("w")
    del c2
    gc.collect()
    assert_bit_exact(out2, t)
    out2.add_(1)  # memory still owned and writable


def test_capacity_exhausted():
    name = f"cap{uuid.uuid4().hex}"
    c = create_remote_connector(f"memory://{name}", capacity="1kb")
    try:
        with pytest.raises(ResourceExhaustedError) as info:
            c.set("big", torch.zeros(4096, dtype=torch.uint8))
        assert isinstance(info.value, MemoryError)
        assert isinstance(info.value, MooncakeConnectorError)
        assert c.exists("big") is False
        small = torch.arange(16, dtype=torch.int32)  # 64 bytes + header fits
        c.set("small", small)
        assert_bit_exact(c.get("small"), small)
    finally:
        c.close()


def test_concurrent_threads(conn):
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for j in range(50):
                t = random_tensor(torch.float32, (64, 17), seed=i * 1000 + j)
                conn.set(f"t{i}/{j}", t)
                conn.setstr(f"s{i}/{j}", f"value {i} {j} ✓")
                assert torch.equal(conn.get(f"t{i}/{j}").view(torch.uint8),
                                   t.view(torch.uint8))
                assert conn.getstr(f"s{i}/{j}") == f"value {i} {j} ✓"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(conn.list("t")) == 400
    for i in range(8):
        t = random_tensor(torch.float32, (64, 17), seed=i * 1000 + 49)
        assert_bit_exact(conn.get(f"t{i}/49"), t)


@pytest.mark.parametrize("data", [b"", b"\x00\xff raw \x80", bytearray(b"ba"), memoryview(b"mv")])
def test_setbytes_getbytes_round_trip(conn, data):
    conn.setbytes("raw", data)
    assert conn.getbytes("raw") == bytes(data)
    assert conn.getbytes("missing") is None


def test_setstr_refuses_text_that_is_a_tensor_value(conn):
    conn.set("t", torch.zeros(4, dtype=torch.uint8))
    as_text = conn.getbytes("t").decode("ascii")
    with pytest.raises(ValueError):
        conn.setstr("s", as_text)


def test_lone_surrogate_is_a_value_error(conn):
    with pytest.raises(ValueError):
        conn.setstr("k", "\ud800")


def test_device_forms_are_accepted():
    for device in ("cpu", "cpu:0", torch.device("cpu"), None):
        with create_remote_connector("memory://", device=device) as c:
            assert c.device.startswith("cpu")
    # SGLang opens its connector with the engine's device.
    for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
        with create_remote_connector("memory://", device=device) as c:
            assert c.device.startswith("cuda")
    for device in ("tpu", "cuda:x"):
        with pytest.raises(InvalidArgumentError, match="not supported"):
            create_remote_connector("memory://", device=device)


def test_get_on_a_cuda_connector_returns_a_cuda_tensor():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch on this machine (GPU runs: bench/results/)")
    with create_remote_connector("memory://", device="cuda") as c:
        t = torch.randn(3, 3, device="cuda")
        c.set("k", t)
        back = c.get("k")
        assert back.device.type == "cuda" and torch.equal(back, t)


def test_zero_dim_numpy_array_keeps_its_shape(conn):
    conn.set("z", np.array(2.5, dtype=np.float32))
    out = conn.get("z")
    assert tuple(out.shape) == () and out.item() == 2.5


def test_key_with_lone_surrogate_is_invalid_argument(conn):
    with pytest.raises(InvalidArgumentError, match="UTF-8"):
        conn.set("k\ud800", torch.zeros(1))
    with pytest.raises(InvalidArgumentError, match="UTF-8"):
        conn.get("k\ud800")
    with pytest.raises(TypeError, match="str"):
        conn.getbytes(b"bytes-key")


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: sparse CSR and nested are beta
def test_sparse_and_nested_tensors_are_type_errors_naming_the_layout(conn):
    with pytest.raises(TypeError, match="sparse_coo"):
        conn.set("s", torch.eye(3).to_sparse())
    with pytest.raises(TypeError, match="sparse_csr"):
        conn.set("s", torch.eye(3).to_sparse_csr())
    with pytest.raises(TypeError, match="nested"):
        conn.set("s", torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]))
    assert conn.get("s") is None
