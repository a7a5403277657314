"""Model save/load glue: torch tensors in and out of the C++ model layer
(``include/mooncake_connector/model.h``). Batching, checksums, the manifest
and the store calls all happen in C++."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional

from ._torch import torch

from . import _impl
from ._defaults import DEFAULT_BATCH_BYTES, SAVE_BATCH_BYTES
from ._errors import FailedPreconditionError, InvalidArgumentError
from ._tensors import _NAME_TO_TORCH, as_cpu_tensor, to_dlpack


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
                    batch_bytes: int = SAVE_BATCH_BYTES, progress: Progress = None,
                    pin: bool = True) -> None:
    tensors = []
    # Tensors on one CUDA device (the first one's) go to C++ as they are: it
    # copies them to the host a batch at a time (Model::SaveStateDictCuda),
    # so the host never holds the whole rank. Tensors elsewhere are copied
    # into CPU memory here.
    device = None
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be str, got {type(name).__name__}")
        if (isinstance(value, torch.Tensor) and value.is_cuda and not value.is_nested
                and value.layout == torch.strided and (device is None or value.device == device)):
            device = value.device
            tensors.append((name, to_dlpack(value.detach().contiguous())))
        else:
            tensors.append((name, to_dlpack(as_cpu_tensor(value))))
    stream = torch.cuda.current_stream(device).cuda_stream if device is not None else 0
    model.save_state_dict(rank, tensors, world_size, layout, batch_bytes, progress, pin, stream)


def _batches(reader: "_impl.ModelReader") -> Iterator[tuple[str, torch.Tensor]]:
    while True:
        batch = reader.next_batch()
        if not batch:
            return
        for name, capsule in batch:
            yield name, torch.from_dlpack(capsule)


def _load_cuda(reader: "_impl.ModelReader", fill, device: torch.device) -> dict[str, torch.Tensor]:
    """Allocates the stored tensors ``fill`` ([(name, dtype, shape, nbytes)])
    on ``device`` and fills them in one pipelined C++ call."""
    out = {name: torch.empty(shape, dtype=_NAME_TO_TORCH[dtype], device=device) for name, dtype, shape, _ in fill}
    _fill_cuda(reader, list(out.items()), device)
    return out


def _fill_cuda(reader: "_impl.ModelReader", tensors: list, device: torch.device) -> list[str]:
    """Fills ``tensors`` ([(name, tensor)], all on ``device``) through the C++
    pipeline. Its copies are queued on torch's current stream of that device,
    so they are ordered with torch's own work there."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index).cuda_stream
    return reader.load_into_cuda([(name, to_dlpack(t)) for name, t in tensors], stream)


def weight_iterator(model: "_impl.Model", rank: int, *, device: Any = "cpu", verify: bool = True,
                    batch_bytes: int = DEFAULT_BATCH_BYTES,
                    progress: Progress = None) -> Iterator[tuple[str, torch.Tensor]]:
    target = _device(device)
    if target.type == "cuda":
        # Groups of batch_bytes go to the GPU through the C++ pipeline, whose
        # own batches (a quarter of a group) overlap fetching with copying.
        reader = model.reader(rank, verify, max(1, batch_bytes // 4), None)
        if reader.has_manifest:
            yield from _device_groups(reader, target, batch_bytes, progress)
            return
    # Each batch is handed on and, as a loader uses it, let go: the C++ core
    # may reuse the batch's memory (streaming).
    reader = model.reader(rank, verify, batch_bytes, progress, True)
    for name, tensor in _batches(reader):
        yield name, (tensor if target.type == "cpu" else tensor.to(target))


def _device_groups(reader, device: torch.device, group_bytes: int,
                   progress: Progress) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors loaded onto ``device`` a group at a time, as the C++ core
    plans them (ModelReader::PlanDeviceGroups: aliases, what is kept)."""
    held: dict[str, torch.Tensor] = {}
    done, total = 0, reader.total_bytes  # (read first: a load_into_cuda call sets it to its own)
    for fill, hand_out, drop in reader.device_groups(group_bytes):
        if fill:
            held.update(_load_cuda(reader, fill, device))
            done += sum(nbytes for _, _, _, nbytes in fill)
            if progress is not None:
                progress(done, total)
        for name, stored in hand_out:
            yield name, held[stored]
        for stored in drop:
            del held[stored]


def load_state_dict(model: "_impl.Model", rank: int, *, device: Any = "cpu", verify: bool = True,
                    batch_bytes: int = DEFAULT_BATCH_BYTES,
                    progress: Progress = None) -> dict[str, torch.Tensor]:
    reader = model.reader(rank, verify, batch_bytes, progress)
    target = _device(device)
    if target.type == "cpu":  # aliases already share storage
        return {name: torch.from_dlpack(capsule) for name, capsule in reader.load_all()}
    if target.type == "cuda" and reader.has_manifest:
        return dict(_device_groups(reader, target, 2**64 - 1, None))
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
    on_host = []  # (name, tensor) filled in CPU memory
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
        on_host.append((name, to_dlpack(staging)))
    if reader is None:
        reader = model.reader(rank, verify, batch_bytes, progress)
    missed = None  # the stored tensors that no call so far filled, in stored order
    with torch.no_grad():
        if on_host or not on_cuda:
            missed = reader.load_into(on_host)
        for index, items in on_cuda.items():
            left = set(_fill_cuda(reader, items, torch.device("cuda", index)))
            stored = missed if missed is not None else [entry[0] for entry in reader.tensors()]
            missed = [n for n in stored if n in left]
        for dest, staging in copy_back:
            dest.copy_(staging, non_blocking=False)
    if strict and missed:
        shown = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
        raise KeyError(f"the stored model has tensors that were not asked for: {shown} "
                       "(pass strict=False to allow)")
    return missed
