"""Model save/load glue: torch tensors in and out of the C++ model layer
(``include/mooncake_connector/model.h``). Batching, checksums, the manifest
and the store calls all happen in C++."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional

import torch

from . import _impl
from ._tensors import as_cpu_tensor, dtype_name, from_wire, to_wire

#: One batched store call moves at most this many bytes by default.
DEFAULT_BATCH_BYTES = 256 << 20

Progress = Optional[Callable[[int, int], None]]


def _device(device: Any) -> torch.device:
    return torch.device("cpu" if device is None else device)


def save_state_dict(model: "_impl.Model", rank: int, state_dict: Mapping[str, Any], *,
                    world_size: int = 1, batch_bytes: int = DEFAULT_BATCH_BYTES,
                    progress: Progress = None) -> None:
    names, arrays, dtypes, shapes = [], [], [], []
    keep = []  # CPU copies of GPU tensors live until the save returns
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be str, got {type(name).__name__}")
        if isinstance(value, torch.Tensor) and value.device.type != "cpu":
            value = value.detach().to("cpu")
        tensor = as_cpu_tensor(value)
        keep.append(tensor)
        data, dtype, shape = to_wire(tensor)
        names.append(name)
        arrays.append(data)
        dtypes.append(dtype)
        shapes.append(shape)
    model.save_state_dict(rank, names, arrays, dtypes, shapes, world_size, batch_bytes, progress)


def _batches(reader: "_impl.ModelReader") -> Iterator[tuple[str, torch.Tensor]]:
    while True:
        batch = reader.next_batch()
        if not batch:
            return
        for name, data, dtype, shape in batch:
            yield name, from_wire(data, dtype, shape)


def weight_iterator(model: "_impl.Model", rank: int, *, device: Any = "cpu", verify: bool = True,
                    batch_bytes: int = DEFAULT_BATCH_BYTES,
                    progress: Progress = None) -> Iterator[tuple[str, torch.Tensor]]:
    reader = model.reader(rank, verify, batch_bytes, progress)
    target = _device(device)
    for name, tensor in _batches(reader):
        yield name, (tensor if target.type == "cpu" else tensor.to(target))


def load_state_dict(model: "_impl.Model", rank: int, *, device: Any = "cpu", verify: bool = True,
                    batch_bytes: int = DEFAULT_BATCH_BYTES,
                    progress: Progress = None) -> dict[str, torch.Tensor]:
    reader = model.reader(rank, verify, batch_bytes, progress)
    target = _device(device)
    if target.type == "cpu":  # aliases already share storage
        return dict(_batches(reader))
    # Tensors the manifest lists as aliases (tied weights) stay shared on the
    # device: each stored tensor is moved once.
    canonical = {name: alias for name, _, _, _, alias in reader.tensors() if alias}
    moved: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in _batches(reader):
        key = canonical.get(name, name)
        if key not in moved:
            moved[key] = tensor.to(target)
        out[name] = moved[key]
    return out


def load_into(model: "_impl.Model", rank: int, tensors: Mapping[str, torch.Tensor], *,
              verify: bool = True, strict: bool = True, batch_bytes: int = DEFAULT_BATCH_BYTES,
              progress: Progress = None) -> list[str]:
    """Fills ``tensors`` in place; returns the stored names not asked for
    (``strict`` raises ``KeyError`` listing them instead)."""
    names, arrays, dtypes, shapes = [], [], [], []
    copy_back = []  # (destination, CPU staging) for tensors we cannot fill directly
    for name, dest in tensors.items():
        if not isinstance(dest, torch.Tensor):
            raise TypeError(f"load_into expects torch tensors, got {type(dest).__name__} for {name!r}")
        direct = dest.device.type == "cpu" and dest.is_contiguous() and dest.layout == torch.strided
        staging = dest if direct else torch.empty(dest.shape, dtype=dest.dtype, device="cpu",
                                                  pin_memory=dest.device.type == "cuda")
        if not direct:
            copy_back.append((dest, staging))
        flat = staging.detach().reshape(-1).view(torch.uint8)
        names.append(name)
        arrays.append(flat.numpy())
        dtypes.append(dtype_name(dest.dtype))
        shapes.append(list(dest.shape))
    reader = model.reader(rank, verify, batch_bytes, progress)
    with torch.no_grad():
        missed = reader.load_into(names, arrays, dtypes, shapes)
        for dest, staging in copy_back:
            dest.copy_(staging, non_blocking=False)
    if strict and missed:
        shown = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
        raise KeyError(f"the stored model has tensors that were not asked for: {shown} "
                       "(pass strict=False to allow)")
    return missed
