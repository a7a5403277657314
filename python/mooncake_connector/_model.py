"""Model save/load glue: torch tensors in and out of the C++ model layer
(``include/mooncake_connector/model.h``). Batching, checksums, the manifest
and the store calls all happen in C++."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional

from ._torch import torch

from . import _impl
from ._defaults import DEFAULT_BATCH_BYTES
from ._errors import FailedPreconditionError, InvalidArgumentError
from ._tensors import _NAME_TO_TORCH, as_cpu_tensor, dtype_name


Progress = Optional[Callable[[int, int], None]]


def _device(device: Any) -> torch.device:
    """The torch device to load onto; FailedPreconditionError when it is a
    CUDA device this process cannot use (torch built without CUDA, no GPU)."""
    target = torch.device("cpu" if device is None else device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise FailedPreconditionError(
            f"device {str(target)!r} was asked for, but CUDA is not available here (torch "
            f"{torch.__version__}{' is built without CUDA' if torch.version.cuda is None else ' sees no GPU'}): "
            "load onto the CPU, or install a CUDA build of torch on a machine with a GPU")
    return target


def save_state_dict(model: "_impl.Model", rank: int, state_dict: Mapping[str, Any], *,
                    world_size: int = 1, layout: str = "engine",
                    batch_bytes: int = DEFAULT_BATCH_BYTES, progress: Progress = None,
                    pin: bool = True) -> None:
    names, pointers, sizes, dtypes, shapes = [], [], [], [], []
    keep = []  # the tensors whose addresses go to C++ (CPU copies of GPU ones) live until the save returns
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be str, got {type(name).__name__}")
        if isinstance(value, torch.Tensor) and value.device.type != "cpu":
            value = value.detach().to("cpu")
        tensor = as_cpu_tensor(value)
        keep.append(tensor)
        names.append(name)
        pointers.append(tensor.data_ptr())
        sizes.append(tensor.numel() * tensor.element_size())
        dtypes.append(dtype_name(tensor.dtype))
        shapes.append(list(tensor.shape))
    model.save_state_dict(rank, names, pointers, sizes, dtypes, shapes, world_size, layout, batch_bytes,
                          progress, pin)


def _batches(reader: "_impl.ModelReader") -> Iterator[tuple[str, torch.Tensor]]:
    while True:
        batch = reader.next_batch()
        if not batch:
            return
        for name, capsule in batch:
            yield name, torch.from_dlpack(capsule)


def _cuda_target(device: torch.device) -> tuple[int, int]:
    """(device index, the address of torch's current stream on it): the C++
    core queues its copies on that stream, so they are ordered with torch's
    own work there."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(index).cuda_stream


def _stored(reader: "_impl.ModelReader") -> list[tuple[str, str, list[int], int, str]]:
    """The manifest's (name, dtype, shape, nbytes, alias_of), or [] for a model
    without one (SGLang-written: dtypes unknown until read)."""
    entries = reader.tensors()
    return [] if any(dtype is None for _, dtype, _, _, _ in entries) else entries


def _load_cuda(reader: "_impl.ModelReader", entries, device: torch.device) -> dict[str, torch.Tensor]:
    """Allocates the stored tensors of ``entries`` on ``device`` (aliases share
    their target) and fills them in one pipelined C++ call."""
    out: dict[str, torch.Tensor] = {}
    names, pointers, sizes, dtypes, shapes = [], [], [], [], []
    for name, dtype, shape, nbytes, alias in entries:
        if alias or name in out:
            continue
        tensor = torch.empty(shape, dtype=_NAME_TO_TORCH[dtype], device=device)
        out[name] = tensor
        names.append(name)
        pointers.append(tensor.data_ptr())
        sizes.append(nbytes)
        dtypes.append(dtype)
        shapes.append(list(shape))
    index, stream = _cuda_target(device)
    reader.load_into_cuda(names, pointers, sizes, dtypes, shapes, index, stream)
    return out


def weight_iterator(model: "_impl.Model", rank: int, *, device: Any = "cpu", verify: bool = True,
                    batch_bytes: int = DEFAULT_BATCH_BYTES,
                    progress: Progress = None) -> Iterator[tuple[str, torch.Tensor]]:
    target = _device(device)
    if target.type == "cuda":
        # Groups of batch_bytes go to the GPU through the C++ pipeline, whose
        # own batches (a quarter of a group) overlap fetching with copying.
        reader = model.reader(rank, verify, max(1, batch_bytes // 4), None)
        entries = _stored(reader)
        if entries:
            yield from _cuda_groups(reader, entries, target, batch_bytes, progress)
            return
    # Each batch is handed on and, as a loader uses it, let go: the C++ core
    # may reuse the batch's memory (streaming).
    reader = model.reader(rank, verify, batch_bytes, progress, True)
    for name, tensor in _batches(reader):
        yield name, (tensor if target.type == "cpu" else tensor.to(target))


def _cuda_groups(reader, entries, device: torch.device, batch_bytes: int,
                 progress: Progress) -> Iterator[tuple[str, torch.Tensor]]:
    by_name = {e[0]: e for e in entries}
    total = sum(e[3] for e in entries if not e[4])
    loaded: dict[str, torch.Tensor] = {}  # stored tensors that aliases still need
    needed_later = {e[4] for e in entries if e[4]}
    done = 0
    pending: list[str] = []
    group: list = []
    group_bytes = 0

    def flush():
        nonlocal done, group, group_bytes
        if group:
            fresh = _load_cuda(reader, group, device)
            done += group_bytes
            if progress is not None:
                progress(done, total)
            loaded.update(fresh)
        group, group_bytes = [], 0

    for name, _, _, _, alias in entries:
        stored = alias or name
        if stored not in loaded and all(g[0] != stored for g in group):
            group.append(by_name[stored])
            group_bytes += by_name[stored][3]
        pending.append(name)
        if group_bytes >= batch_bytes:
            flush()
            for n in pending:
                s = by_name[n][4] or n
                yield n, loaded[s]
                if s not in needed_later:
                    loaded.pop(s, None)
            pending = []
    flush()
    for n in pending:
        yield n, loaded[by_name[n][4] or n]


def load_state_dict(model: "_impl.Model", rank: int, *, device: Any = "cpu", verify: bool = True,
                    batch_bytes: int = DEFAULT_BATCH_BYTES,
                    progress: Progress = None) -> dict[str, torch.Tensor]:
    reader = model.reader(rank, verify, batch_bytes, progress)
    target = _device(device)
    if target.type == "cpu":  # aliases already share storage
        return dict(_batches(reader))
    entries = _stored(reader)
    if target.type == "cuda" and entries:
        stored = _load_cuda(reader, entries, target)
        return {name: stored[alias or name] for name, _, _, _, alias in entries}
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
              progress: Progress = None, reader: "Optional[_impl.ModelReader]" = None) -> list[str]:
    """Fills ``tensors`` in place; returns the stored names not asked for
    (``strict`` raises ``KeyError`` listing them instead). ``reader``: an
    open reader of that rank to use (a caller filling a model in several
    calls reads its manifest once) instead of opening one. Contiguous CUDA
    destinations are filled by the C++ pipeline through pinned buffers; other
    non-CPU or strided ones through a CPU copy."""
    names, pointers, sizes, dtypes, shapes = [], [], [], [], []
    on_cuda: dict[int, list] = {}  # device index -> [(name, tensor)]
    copy_back = []  # (destination, CPU staging) for tensors we cannot fill directly
    for name, dest in tensors.items():
        if not isinstance(dest, torch.Tensor):
            raise TypeError(f"load_into expects torch tensors, got {type(dest).__name__} for {name!r}")
        if dest.device.type == "meta":
            raise InvalidArgumentError(f"cannot load into {name!r}: it is on the meta device, which has no "
                                       "storage (materialize the model first, e.g. to_empty(device=...))")
        dense = dest.is_contiguous() and dest.layout == torch.strided
        if dense and dest.device.type == "cuda":
            on_cuda.setdefault(dest.device.index, []).append((name, dest))
            continue
        direct = dense and dest.device.type == "cpu"
        staging = dest if direct else torch.empty(dest.shape, dtype=dest.dtype, device="cpu",
                                                  pin_memory=dest.device.type == "cuda")
        if not direct:
            copy_back.append((dest, staging))
        # The C++ core writes at the tensor's address: `tensors` (and
        # copy_back) keep every destination alive until it returns.
        names.append(name)
        pointers.append(staging.data_ptr())
        sizes.append(staging.numel() * staging.element_size())
        dtypes.append(dtype_name(dest.dtype))
        shapes.append(list(dest.shape))
    if reader is None:
        reader = model.reader(rank, verify, batch_bytes, progress)
    missed = None  # the stored tensors that no call so far filled, in stored order
    with torch.no_grad():
        if names or not on_cuda:
            missed = reader.load_into(names, pointers, sizes, dtypes, shapes)
        for index, items in on_cuda.items():
            _, stream = _cuda_target(torch.device("cuda", index))
            left = set(reader.load_into_cuda(
                [n for n, _ in items], [t.data_ptr() for _, t in items],
                [t.numel() * t.element_size() for _, t in items],
                [dtype_name(t.dtype) for _, t in items], [list(t.shape) for _, t in items],
                index, stream))
            stored = missed if missed is not None else [entry[0] for entry in reader.tensors()]
            missed = [n for n in stored if n in left]
        for dest, staging in copy_back:
            dest.copy_(staging, non_blocking=False)
    if strict and missed:
        shown = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
        raise KeyError(f"the stored model has tensors that were not asked for: {shown} "
                       "(pass strict=False to allow)")
    return missed
