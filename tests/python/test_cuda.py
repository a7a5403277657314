"""Loads onto a CUDA device through the C++ pipeline: pinned host buffers, the
fetch of one batch overlapped with the asynchronous copy of the last one, on
torch's current stream; or, from a memory:// store with pinned values,
straight from the store's memory by DMA. Skipped, saying so, where torch sees
no GPU (as in CI); the GPU runs are recorded in bench/results/gpu_*.txt.
Without a GPU the tests here that run check that a CUDA load and a pinned
memory:// store say there is no driver."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
import torch

from conftest import assert_bit_exact, random_tensor
from model_fixtures import generated_state_dict, model_url
from mooncake_connector import (DataLossError, FailedPreconditionError, InvalidArgumentError,
                                create_remote_connector)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="no CUDA device visible to torch on this machine "
                                      "(GPU runs are recorded in bench/results/gpu_*.txt)")


def has_driver() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


@pytest.fixture(params=["", "pinned"])
def model(store_url, request):
    """The model on each store; on memory:// also with pinned values
    (?pinned=1), which a GPU load copies straight from the store by DMA."""
    url = model_url(store_url, "org/gpu-model", chunked=True)
    if request.param == "pinned":
        if not store_url.startswith("memory"):
            pytest.skip("pinned values are a memory:// option")
        if not torch.cuda.is_available():
            pytest.skip("pinned memory:// values need a CUDA driver (GPU runs: bench/results/gpu_*.txt)")
        url += "?pinned=1"
    c = create_remote_connector(url)
    yield c
    c.close()


def test_pinned_memory_store_without_a_driver_says_so():
    if has_driver():
        pytest.skip("this machine has a CUDA driver: the GPU tests cover pinned memory:// stores")
    with pytest.raises(FailedPreconditionError, match=r"pinned values needs the CUDA driver.*libcuda\.so\.1"):
        create_remote_connector("memory://pinned-without-driver/m?pinned=1")
    with pytest.raises(InvalidArgumentError, match="pinned must be 0 or 1"):
        create_remote_connector("memory://pinned-bad/m?pinned=yes")


def state_dict() -> dict[str, torch.Tensor]:
    sd = generated_state_dict(seed=3, small=25)  # every dtype, 0-d and empty tensors
    sd.update({f"same.{i}": random_tensor(torch.bfloat16, (256, 256), seed=60 + i) for i in range(12)})
    sd["big"] = random_tensor(torch.float16, (1024, 700), seed=99)  # larger than the small batches below
    sd["tied"] = sd["same.3"]
    return sd


def on_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    assert all(t.device.type == "cuda" for t in tensors.values())
    return {n: t.cpu() for n, t in tensors.items()}


def assert_same(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected) or sorted(actual) == sorted(expected)
    for name, t in expected.items():
        assert_bit_exact(actual[name], t)


def test_without_a_driver_a_cuda_load_says_so(model):
    if has_driver():
        pytest.skip("this machine has a CUDA driver: the GPU tests below cover the CUDA path")
    model.save_state_dict({"w": torch.arange(6, dtype=torch.float32)})
    reader = model._model().reader(0, True, 1 << 20, None)
    with pytest.raises(FailedPreconditionError, match=r"no CUDA driver.*libcuda\.so\.1"):
        reader.load_into_cuda([("w", cuda_capsule(1 << 20, [6]))], 0)


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
                ("ndim", ctypes.c_int32), ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                ("lanes", ctypes.c_uint16), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.c_void_p), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_capsules_kept = []  # the structs a capsule points at (it has no deleter)


def cuda_capsule(address: int, shape: list[int], device: int = 0):
    """A DLPack capsule of a float32 tensor at ``address`` of CUDA device
    ``device``: what torch.utils.dlpack.to_dlpack gives for a GPU tensor,
    made for any address (the memory is never touched: the load refuses it
    first)."""
    dims = (ctypes.c_int64 * len(shape))(*shape)
    managed = _DLManagedTensor(_DLTensor(address, 2, device, len(shape), 2, 32, 1, dims, None, 0), None, None)
    _capsules_kept.append((dims, managed))
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new_capsule(ctypes.addressof(managed), b"dltensor", None)


@needs_gpu
@pytest.mark.parametrize("batch_bytes", [64 << 10, 256 << 20])
def test_every_load_path_is_bit_exact_on_the_gpu(model, batch_bytes):
    # 64 KiB batches: dozens of pipeline rounds, both pinned buffers reused
    # many times, and tensors larger than a batch.
    sd = state_dict()
    model.save_state_dict(sd)
    loaded = model.load_state_dict(device="cuda", batch_bytes=batch_bytes)
    assert list(loaded) == list(sd)
    assert_same(on_cpu(loaded), sd)
    assert loaded["tied"].data_ptr() == loaded["same.3"].data_ptr()
    assert len({loaded[f"same.{i}"].data_ptr() for i in range(12)}) == 12

    with create_remote_connector(model.url, device="cuda") as on_gpu:
        seen = []
        pairs = {}
        for name, t in on_gpu.weight_iterator(batch_bytes=batch_bytes, progress=lambda d, t: seen.append((d, t))):
            pairs[name] = t
        assert list(pairs) == [n for n, _ in model.weight_iterator()]  # the CPU order
        assert_same(on_cpu(pairs), sd)
        assert seen and seen[-1][0] == seen[-1][1]  # progress reaches the total

    # load_into: contiguous CUDA tensors directly, a transposed CUDA view and
    # CPU tensors through the host.
    dest = {n: torch.full_like(t, 0, device="cuda") if t.dtype != torch.bool else
            torch.zeros_like(t, device="cuda") for n, t in sd.items()}
    dest["big"] = torch.empty(700, 1024, dtype=torch.float16, device="cuda").t()
    dest["norm.weight"] = torch.empty_like(sd["norm.weight"])
    assert model.load_into(dest, batch_bytes=batch_bytes) == []
    for name, t in sd.items():
        assert_bit_exact(dest[name].cpu(), t)
    assert dest["norm.weight"].device.type == "cpu"


@needs_gpu
def test_load_into_a_subset_reports_what_it_left(model):
    sd = state_dict()
    model.save_state_dict(sd)
    want = {n: torch.empty_like(sd[n], device="cuda") for n in ("big", "same.0")}
    with pytest.raises(KeyError, match="not asked for"):
        model.load_into(want)
    missed = model.load_into(want, strict=False)
    assert sorted(missed) == sorted(set(sd) - set(want))
    assert_bit_exact(want["big"].cpu(), sd["big"])


@needs_gpu
def test_copies_are_ordered_on_the_callers_stream(model):
    sd = {f"w{i}": random_tensor(torch.float32, (512, 512), seed=i) for i in range(16)}
    model.save_state_dict(sd)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        loaded = model.load_state_dict(device="cuda", batch_bytes=1 << 20)
        # Integer sums of the raw bits (random bits make NaNs), queued on `side`.
        sums = torch.stack([t.view(torch.int32).long().sum() for t in loaded.values()])
    side.synchronize()
    expected = torch.stack([t.view(torch.int32).long().sum() for t in sd.values()])
    assert torch.equal(sums.cpu(), expected)


@needs_gpu
def test_corrupted_value_is_data_loss_on_the_gpu(model, store_url):
    sd = state_dict()
    model.save_state_dict(sd)
    victim = "big"
    # Loaded whole first, twice: a value checked by an earlier load (memory://
    # does not hash an unchanged stored value again) is checked again once
    # it is replaced.
    for _ in range(2):
        model.load_into({n: torch.empty_like(t, device="cuda") for n, t in sd.items()})
    with create_remote_connector(store_url) as plain:
        key = f"org/gpu-model/keys/rank_0/{victim}"
        raw = bytearray(plain.getbytes(key))
        raw[-777] ^= 0x10
        plain.setbytes(key, bytes(raw))
    with pytest.raises(DataLossError, match=f"checksum mismatch in tensor '{victim}'"):
        model.load_state_dict(device="cuda", batch_bytes=64 << 10)
    with pytest.raises(DataLossError, match=victim):
        model.load_into({n: torch.empty_like(t, device="cuda") for n, t in sd.items()})
    with pytest.raises(DataLossError, match=victim):
        with create_remote_connector(model.url, device="cuda") as on_gpu:
            list(on_gpu.weight_iterator())
    # The pipeline recovers: the next load works, and verify=False trusts the store.
    bad = model.load_state_dict(device="cuda", verify=False)[victim].cpu()
    assert not torch.equal(bad, sd[victim])
    one = {"same.0": torch.empty_like(sd["same.0"], device="cuda")}
    model.load_into(one, strict=False)
    assert_bit_exact(one["same.0"].cpu(), sd["same.0"])


@needs_gpu
def test_destinations_that_are_not_device_memory_are_refused(model):
    model.save_state_dict({"w": torch.arange(1024, dtype=torch.float32)})
    reader = model._model().reader(0, True, 1 << 20, None)
    host = torch.empty(1024, dtype=torch.float32)
    small = torch.empty(16, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    with pytest.raises(InvalidArgumentError, match="'w'.*not CUDA device memory"):
        reader.load_into_cuda([("w", cuda_capsule(host.data_ptr(), [1024]))], stream)
    # The last 8 bytes of the allocation torch took from the driver for `small`.
    segment = next(s for s in torch.cuda.memory_snapshot()
                   if s["address"] <= small.data_ptr() < s["address"] + s["total_size"])
    end = segment["address"] + segment["total_size"]
    with pytest.raises(InvalidArgumentError, match="'w'.*holds 8 bytes, not 4096"):
        reader.load_into_cuda([("w", cuda_capsule(end - 8, [1024]))], stream)
    with pytest.raises(InvalidArgumentError, match="device 99 does not exist"):
        reader.load_into_cuda([("w", cuda_capsule(small.data_ptr(), [1024], device=99))], stream)
    with pytest.raises(InvalidArgumentError, match="stored as F32"):
        model.load_into({"w": torch.empty(1024, dtype=torch.float16, device="cuda")})


def test_without_a_driver_a_cuda_save_says_so(model):
    if has_driver():
        pytest.skip("this machine has a CUDA driver: the GPU tests below cover saves from a GPU")
    with pytest.raises(FailedPreconditionError, match=r"no CUDA driver.*libcuda\.so\.1.*saving from a GPU"):
        model._model().save_state_dict(0, [("w", cuda_capsule(1 << 20, [6]))], 1, "engine", 1 << 20, None, True, 0)
    assert model.list("org/gpu-model/") == []  # nothing written


def gpu_state_dict() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """state_dict() on the GPU (tied tensors still tied, one transposed
    view), and what it holds on the CPU."""
    sd = state_dict()
    on_gpu = {n: t.to("cuda") for n, t in sd.items() if n != "tied"}
    on_gpu["tied"] = on_gpu["same.3"]
    on_gpu["big"] = sd["big"].t().contiguous().to("cuda").t()  # not contiguous on the device
    return on_gpu, sd


@needs_gpu
@pytest.mark.parametrize("batch_bytes", [64 << 10, 1 << 30])
def test_a_state_dict_on_the_gpu_is_saved_bit_exact(model, batch_bytes):
    # 64 KiB batches: dozens of rounds through both pinned buffers, tensors
    # larger than a batch (a slot grows for them); 1 GiB: one batch.
    on_gpu, sd = gpu_state_dict()
    seen = []
    model.save_state_dict(on_gpu, batch_bytes=batch_bytes, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    assert_same(model.load_state_dict(), sd)
    info = model.inspect_model()
    assert info["complete"] and not info["problems"]
    # Saved again, one tensor changed: the others are kept (read back and
    # checked through the staging buffers), the changed one rewritten.
    on_gpu["same.5"] = on_gpu["same.5"] + 1
    sd["same.5"] = on_gpu["same.5"].cpu()
    model.save_state_dict(on_gpu, batch_bytes=batch_bytes)
    assert_same(model.load_state_dict(), sd)
    # A state dict partly on the GPU and partly on the CPU.
    on_gpu["norm.weight"] = sd["norm.weight"]
    model.save_state_dict(on_gpu, batch_bytes=batch_bytes)
    assert_same(model.load_state_dict(), sd)
    # A load onto the GPU after the saves (their staging buffers are in the
    # pinned pool the load takes its buffers from).
    assert_same(on_cpu(model.load_state_dict(device="cuda", batch_bytes=batch_bytes)), sd)


@needs_gpu
def test_a_save_from_the_gpu_is_ordered_on_the_callers_stream(model):
    # The values are computed on a side stream and saved right away, without
    # a synchronization: the copies to the host are queued behind them.
    base = {f"w{i}": random_tensor(torch.float32, (1024, 1024), seed=i) for i in range(8)}
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        on_gpu = {n: t.to("cuda") for n, t in base.items()}
        torch.cuda._sleep(500_000_000)  # the GPU busy on `side` for a while (~0.3 s) first
        on_gpu = {n: (t.view(torch.int32) ^ 0x5A5A).view(torch.float32) for n, t in on_gpu.items()}
        model.save_state_dict(on_gpu, batch_bytes=1 << 20)
    expected = {n: (t.view(torch.int32) ^ 0x5A5A).view(torch.float32) for n, t in base.items()}
    assert_same(model.load_state_dict(), expected)


@needs_gpu
def test_a_bad_bool_tensor_on_the_gpu_is_refused_before_anything_is_written(model):
    bad = torch.tensor([0, 1, 2], dtype=torch.uint8, device="cuda").view(torch.bool)
    with pytest.raises(InvalidArgumentError, match="'mask' is BOOL but holds a byte"):
        model.save_state_dict({"w": torch.ones(4, device="cuda"), "mask": bad})
    assert model.list("org/gpu-model/") == []  # nothing written


@needs_gpu
def test_sources_that_are_not_device_memory_are_refused(model):
    host = torch.empty(1024, dtype=torch.float32)
    stream = torch.cuda.current_stream().cuda_stream
    save = model._model().save_state_dict
    with pytest.raises(InvalidArgumentError, match="saving tensor 'w' from CUDA device 0.*not CUDA device memory"):
        save(0, [("w", cuda_capsule(host.data_ptr(), [1024]))], 1, "engine", 1 << 20, None, True, stream)
    with pytest.raises(InvalidArgumentError, match="'b' is on CUDA device 99, the others on 0"):
        save(0, [("a", cuda_capsule(host.data_ptr(), [1024])), ("b", cuda_capsule(host.data_ptr(), [1024], 99))],
             1, "engine", 1 << 20, None, True, stream)


@needs_gpu
def test_a_gpu_save_larger_than_its_staging_buffers(model):
    # 64 MiB tensors, three to a 128 MiB batch at most, and one of 160 MiB,
    # larger than a batch: its slot grows for it (and that buffer is freed).
    sd = {f"w{i}": random_tensor(torch.bfloat16, (8192, 4096), seed=i) for i in range(3)}
    sd["embed"] = random_tensor(torch.bfloat16, (20480, 4096), seed=9)
    sd["w3"] = random_tensor(torch.bfloat16, (8192, 4096), seed=3)
    on_gpu = {n: t.to("cuda") for n, t in sd.items()}
    # On mooncake:// with this fixture's 64 KiB chunks: 5,600 chunks, in
    # calls that stay within what Mooncake's TCP transport queues.
    for _ in range(2):  # the second time through buffers the pool kept
        model.save_state_dict(on_gpu)
        loaded = model.load_state_dict()
        for name, t in sd.items():
            assert torch.equal(loaded[name].view(torch.int16), t.view(torch.int16)), name


READ_BACK = '''
import sys, torch
sys.path.insert(0, sys.argv[1])
from conftest import random_tensor
from mooncake_connector import create_remote_connector
with create_remote_connector("mooncake:///org/gpu-saved", device="cuda") as c:
    got = c.load_state_dict()
    assert {t.device.type for t in got.values()} == {"cuda"}, got
    for i in range(4):
        want = random_tensor(torch.bfloat16, (4096, 4096), seed=i)
        assert torch.equal(got[f"w{i}"].cpu().view(torch.int16), want.view(torch.int16)), i
    n = 0
    for name, t in c.weight_iterator():
        i = int(name[1:])
        assert torch.equal(t.cpu().view(torch.int16), random_tensor(torch.bfloat16, (4096, 4096), seed=i).view(torch.int16))
        n += 1
    assert n == 4
print("read back")
'''


@needs_gpu
def test_a_gpu_save_is_read_back_by_another_process(mooncake_cluster):
    # Saved from the GPU by this process, loaded onto the GPU (and through
    # weight_iterator) by a new one: nothing of the save lives only here.
    on_gpu = {f"w{i}": random_tensor(torch.bfloat16, (4096, 4096), seed=i).to("cuda") for i in range(4)}
    with create_remote_connector("mooncake:///org/gpu-saved") as c:
        c.save_state_dict(on_gpu)
    out = subprocess.run([sys.executable, "-c", READ_BACK, os.path.dirname(__file__)], capture_output=True,
                         text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0 and "read back" in out.stdout, out.stderr[-3000:]


@needs_gpu
def test_the_sglang_plugins_engine_path_on_the_gpu(store_url):
    # What SGLang's KV path does through the plugin, without SGLang (it does
    # not install on the GPU hosts; tests/sglang runs it on the CPU): its
    # save_model sets each GPU parameter under its per-rank key and closes,
    # its load hands the engine's own GPU parameters to fill_in_place, which
    # fills them through the pinned pipeline.
    from mooncake_connector.sglang_plugin import open_connector

    url = model_url(store_url, "org/gpu-engine", chunked=True)
    on_gpu, sd = gpu_state_dict()
    del on_gpu["tied"], sd["tied"]  # SGLang's state dict names a tied parameter once
    with create_remote_connector(store_url):  # a memory:// store lives while a connector holds it
        saver = open_connector(url, device="cuda")
        for name, tensor in on_gpu.items():
            saver.set(f"org/gpu-engine/keys/rank_0/{name}", tensor)
        saver.close()
        loader = open_connector(url, device="cuda")
        try:
            # Zeros, so that a fill that wrote nothing fails; contiguous, as
            # SGLang's parameters are.
            params = {n: torch.zeros(t.shape, dtype=t.dtype, device="cuda") for n, t in on_gpu.items()}
            assert loader.fill_in_place(params, 0) is None
            assert loader.load_stats["filled_in_place"] == len(params)
            assert_same(on_cpu(params), sd)
            # Another shape (LoRA padding): refused before anything is written;
            # SGLang then copies from weight_iterator instead.
            params = {n: torch.zeros(t.shape, dtype=t.dtype, device="cuda") for n, t in on_gpu.items()}
            params["big"] = torch.zeros(701, 1024, dtype=torch.float16, device="cuda")
            why = loader.fill_in_place(params, 0)
            assert why and "big" in why
            assert not any(bool(t.reshape(-1).view(torch.uint8).any()) for t in params.values())
            assert_same({n: t.cpu() for n, t in loader.weight_iterator(0)}, sd)
        finally:
            loader.close()
