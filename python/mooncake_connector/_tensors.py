"""torch/numpy glue. Tensors cross into C++ one way, as DLPack capsules
(``to_dlpack``; the binding's FromArray reads them), contiguous, in CPU
memory unless a CUDA load asks for a device's; they come back as DLPack
capsules too (``torch.from_dlpack``)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from ._torch import torch

# torch's own exporter, a C function: about 0.25 µs a tensor, where the
# Python-level Tensor.__dlpack__ takes about 2.3 µs (thousands of small
# tensors made that a few percent of a load). It also exports a tensor that
# requires grad (a module's parameter), which __dlpack__ refuses; the
# capsule holds the tensor's storage until the C++ side lets go of it.
to_dlpack = torch.utils.dlpack.to_dlpack

# The safetensors names of torch dtypes, both ways (the manifest's names).
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
    """A contiguous CPU tensor with the data of ``value`` (a torch.Tensor on
    any device, or a numpy array); copies only when ``value`` is not already
    a contiguous CPU tensor."""
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
    return value.detach().to("cpu").contiguous()
