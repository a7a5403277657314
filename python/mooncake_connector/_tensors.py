"""torch/numpy glue: tensors cross into C++ as flat uint8 bytes plus a dtype
name and a shape, which works for every dtype (bool, bfloat16, float8)
whatever DLPack support torch or numpy have for it."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from ._torch import torch

_TORCH_TO_NAME = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.uint16: "U16",
    torch.int16: "I16",
    torch.uint32: "U32",
    torch.int32: "I32",
    torch.uint64: "U64",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_NAME_TO_TORCH = {name: dtype for dtype, name in _TORCH_TO_NAME.items()}


def as_cpu_tensor(value: Any) -> torch.Tensor:
    """A contiguous CPU tensor with the data of ``value`` (a torch.Tensor or a
    numpy array); copies only when ``value`` is not already contiguous."""
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            value = value.copy(order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
        with warnings.catch_warnings():
            # A read-only array is fine: it is only read, never written.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            value = torch.from_numpy(value)
    elif not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if value.is_nested:
        raise TypeError("nested tensors cannot be stored: store each component tensor")
    if value.layout != torch.strided:
        raise TypeError(f"tensors with layout {value.layout} cannot be stored: convert with "
                        ".to_dense() first")
    if value.device.type != "cpu":
        raise ValueError(f"tensor is on {value.device}; only CPU tensors are supported for now")
    return value.detach().contiguous()


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``ValueError`` if it has none)."""
    name = _TORCH_TO_NAME.get(dtype)
    if name is None:
        raise ValueError(f"dtype {dtype} has no safetensors equivalent")
    return name


def to_wire(tensor: torch.Tensor) -> tuple[np.ndarray, str, list[int]]:
    """(bytes as a uint8 array, dtype name, shape) for a contiguous CPU tensor."""
    name = dtype_name(tensor.dtype)
    flat = tensor.reshape(-1).view(torch.uint8)  # zero-copy for contiguous input
    return flat.numpy(), name, list(tensor.shape)


def from_wire(data: np.ndarray, dtype_name: str, shape: list[int]) -> torch.Tensor:
    """The tensor over ``data`` (shares its memory, which the array owns)."""
    raw = torch.from_numpy(data)
    return raw.view(_NAME_TO_TORCH[dtype_name]).reshape(shape)
