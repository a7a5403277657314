"""Cooperative loads: the processes of a torch.distributed group (a
tensor-parallel group) each fetch a disjoint share of a model's bytes and
exchange them, so every process yields every tensor while each byte leaves
the store once per group.

Who fetches what is planned in C++ (``PlanShares``, model.h: batches of
about ``batch_bytes``, balanced by bytes, a tensor larger than a share split
by rows between the processes; every process computes the same plan). Each
process fetches its share of a batch into one flat buffer per owner: whole
tensors with the C++ ``load_into`` (checksums verified), pieces of split
tensors with ``read_pieces`` (a byte range of the stored value; each split
tensor is checked whole, by every process, once its pieces are together
after the exchange). The group agrees that every share arrived (one
``all_gather_object``), then the shares are exchanged. The next batch is fetched on a helper thread while
the current one is exchanged and handed on.

The exchange: on GPUs (an NCCL group) each owner broadcasts its buffer, in
device memory (whole tensors are loaded there by the C++ CUDA pipeline,
pieces of split tensors read through a pinned host buffer). On
CPUs, when every process of the group runs on this host, the owner fetches
straight into a file of /dev/shm and the others map it (copy-on-write
private mappings, so a consumer that writes a tensor changes only its own):
no bytes move at all. Measured on 16 cores, a gloo broadcast over loopback
moved a share slower than Mooncake fetched it. Across hosts without NCCL,
a gloo broadcast (``MOONCAKE_CONNECTOR_EXCHANGE=broadcast`` forces it;
the default is ``auto``).

Failure is all-or-nothing per batch: a share that could not be fetched (a
lost tensor, a checksum mismatch) fails every process with the owner's error
before anything of the batch is exchanged; a process that dies makes the
collectives of the others fail (gloo and NCCL report the closed connection;
otherwise the group's own timeout bounds the wait). Nothing is yielded from
a batch that was not exchanged whole.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional

from ._torch import torch

from . import _impl
from ._errors import DataLossError, InvalidArgumentError, MooncakeConnectorError, UnavailableError
from ._shared_files import _SHM_DIR, _SharedFiles, _host_id
from ._tensors import _NAME_TO_TORCH, to_dlpack

logger = logging.getLogger("mooncake_connector")

_ALIGN = 64  # every tensor of a share buffer starts at a multiple of this


def _dist():
    import torch.distributed as dist  # noqa: PLC0415 - only cooperative loads need it

    return dist


# The smallest piece a tensor split between the processes is cut into; None:
# the store's chunk size (the C++ plan's default). Benchmarks raise it to
# compare with loads that split nothing.
_MIN_PIECE_BYTES: Optional[int] = None


def group_size(group: Any) -> int:
    return _dist().get_world_size(group)


class _Batch:
    """One batch of the plan: where each piece of a stored tensor sits in its
    owner's buffer. A piece is a whole tensor, or rows of one split between
    the processes (``PlanShares``), put together again after the exchange."""

    def __init__(self, end: int, pieces: list, entries, world: int):
        self.end = end
        self.pieces = pieces  # [(index, offset, size, owner, whole)]
        self.read = sorted({p[0] for p in pieces})
        self.sizes = [0] * world
        self.at: list[int] = []  # each piece's offset in its owner's buffer
        for _, _, size, who, _ in pieces:
            self.at.append(self.sizes[who])
            self.sizes[who] += -(-size // _ALIGN) * _ALIGN
        self.whole = {p[0]: k for k, p in enumerate(pieces) if p[4]}

    def mine(self, me: int) -> list[int]:
        return [k for k, p in enumerate(self.pieces) if p[3] == me]

    def piece(self, buffers: list[torch.Tensor], k: int) -> torch.Tensor:
        _, _, size, who, _ = self.pieces[k]
        return buffers[who][self.at[k]:self.at[k] + size]

    def view(self, buffers: list[torch.Tensor], entries, index: int, reader) -> torch.Tensor:
        """The stored tensor ``index``: a view of its owner's buffer, or, split,
        its pieces copied together and checked as a whole (every process
        checks the same bytes, so all reach the same verdict)."""
        name, dtype, shape, nbytes, _ = entries[index]
        k = self.whole.get(index)
        if k is not None:
            flat = self.piece(buffers, k)
        else:
            flat = torch.empty(nbytes, dtype=torch.uint8, device=buffers[0].device)
            for j, (i, offset, size, _, _) in enumerate(self.pieces):
                if i == index:
                    flat[offset:offset + size].copy_(self.piece(buffers, j))
            # The checksum is computed on the host: a tensor assembled in
            # device memory (an NCCL group) is checked on a copy.
            host = flat if flat.device.type == "cpu" else flat.cpu()
            reader.check_assembled(index, to_dlpack(host))
        return flat.view(_NAME_TO_TORCH[dtype]).view(shape)


def weight_iterator(model: "_impl.Model", rank: int, group: Any, *, device: torch.device,
                    verify: bool, batch_bytes: int, progress, stats: dict,
                    status_group: Any = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields rank ``rank``'s tensors in stored order on every process of
    ``group``; see the module's comment. ``status_group`` (default
    ``group``) carries the small agreement messages: a gloo group beside an
    NCCL ``group``. ``stats`` is filled as the load proceeds."""
    from . import _model  # noqa: PLC0415 - _model imports this module

    dist = _dist()
    status_group = group if status_group is None else status_group
    world, me = dist.get_world_size(group), dist.get_rank(group)
    reader = model.reader(rank, verify, batch_bytes, None)
    entries = reader.tensors()
    on_device = _exchanges_on_device(group)
    # Tensors larger than a share are split between the processes, in
    # pieces of at least the store's chunk size.
    plan = [_Batch(end, pieces, entries, world)
            for end, pieces in reader.plan_shares(world, batch_bytes, min_piece_bytes=_MIN_PIECE_BYTES)]
    where = torch.device("cuda", torch.cuda.current_device()) if on_device else torch.device("cpu")
    total = sum(e[3] for e in entries if not e[4])
    # Seconds: on the helper thread, waiting for this process's shared-memory
    # files (made ahead on a thread of their own) and fetching its shares; on
    # the caller's, waiting for a fetch to finish, agreeing, exchanging, and
    # the caller's own time between yields.
    stats.update(world=world, group_rank=me, total_bytes=total, fetched_bytes=0, received_bytes=0,
                 batches=len(plan), split_tensors=len({p[0] for b in plan for p in b.pieces if not p[4]}),
                 seconds=0.0, create_s=0.0, fetch_s=0.0, wait_s=0.0, agree_s=0.0, exchange_s=0.0, caller_s=0.0)
    start = time.perf_counter()

    # Every process on this host (buffers in host memory): exchange through /dev/shm.
    hello: list = [None] * world
    dist.all_gather_object(hello, (_host_id(), secrets.token_hex(8)), group=status_group)
    shared = None
    mode = os.environ.get("MOONCAKE_CONNECTOR_EXCHANGE", "auto")
    if mode not in ("auto", "broadcast"):
        raise InvalidArgumentError(f"MOONCAKE_CONNECTOR_EXCHANGE={mode!r}: auto or broadcast")
    if mode == "auto" and not on_device and os.path.isdir(_SHM_DIR) and len({h for h, _ in hello}) == 1:
        shared = _SharedFiles(hello[0][1], me)
    stats["exchange"] = "shared memory" if shared else "broadcast"

    def fetch(k: int, b: _Batch) -> tuple[list[torch.Tensor], Optional[BaseException]]:
        buffers = [torch.empty(n if shared is None or who == me else 0, dtype=torch.uint8, device=where)
                   for who, n in enumerate(b.sizes)]
        created = time.perf_counter()
        try:
            if shared is not None and b.sizes[me]:
                after = next((j for j in range(k + 1, len(plan)) if plan[j].sizes[me]), None)
                buffers[me] = shared.take(k, b.sizes[me], None if after is None else (after, plan[after].sizes[me]))
        except OSError as e:
            return buffers, e
        finally:
            stats["create_s"] += time.perf_counter() - created
        mine = b.mine(me)
        whole = {entries[b.pieces[j][0]][0]: b.view(buffers, entries, b.pieces[j][0], reader)
                 for j in mine if b.pieces[j][4]}
        split = [j for j in mine if not b.pieces[j][4]]
        began = time.perf_counter()
        try:
            if whole:
                # The reader the plan came from (only this thread uses it from now on):
                # the manifest is read once per load, not once per batch.
                _model.load_into(model, rank, whole, verify=verify, strict=False, batch_bytes=batch_bytes,
                                 reader=reader)
            if split:  # checked once put together, after the exchange
                _read_pieces(reader, [b.pieces[j] for j in split], [b.piece(buffers, j) for j in split])
        except BaseException as e:  # noqa: BLE001 - handed to the group, raised below
            return buffers, e
        finally:
            stats["fetch_s"] += time.perf_counter() - began
        stats["fetched_bytes"] += sum(b.pieces[j][2] for j in mine)
        return buffers, None

    needed_later = {e[4] for e in entries if e[4]}
    by_name = {e[0]: i for i, e in enumerate(entries)}
    failed = False
    try:
        yield from _batches(plan, fetch, dist, group, status_group, world, me, shared, entries, by_name,
                            needed_later, device, stats, progress, total, reader)
    except Exception:
        failed = True
        raise
    finally:
        if shared is not None:
            shared.close()
            # The load failed for the whole group: the files a process that
            # died left behind would stay in /dev/shm until reboot; they go too.
            if failed:
                shared.sweep()
    stats["seconds"] = time.perf_counter() - start
    logger.info("cooperative load of %s rank %d: process %d of %d fetched %d of %d bytes, received %d (%s)",
                model.name, rank, me, world, stats["fetched_bytes"], total, stats["received_bytes"],
                stats["exchange"])


def _batches(plan, fetch, dist, group, status_group, world, me, shared, entries, by_name, needed_later,
             device, stats, progress, total, reader) -> Iterator[tuple[str, torch.Tensor]]:
    kept: dict[int, torch.Tensor] = {}  # stored tensors that later aliases still need
    done = 0
    begin = 0
    with ThreadPoolExecutor(1, thread_name_prefix="mooncake-share") as pool:
        pending = pool.submit(fetch, 0, plan[0]) if plan else None
        for k, b in enumerate(plan):
            t0 = time.perf_counter()
            buffers, error = pending.result()
            t1 = time.perf_counter()
            _agree(dist, status_group, world, me, error, k, len(plan))
            t2 = time.perf_counter()
            stats["wait_s"] += t1 - t0
            stats["agree_s"] += t2 - t1
            if shared is not None:  # everyone has mapped the batches before: their files can go
                shared.unlink(before=k)
            pending = pool.submit(fetch, k + 1, plan[k + 1]) if k + 1 < len(plan) else None
            try:
                if shared is not None:
                    for who, n in enumerate(b.sizes):
                        if who != me and n:
                            buffers[who] = shared.open(k, who, n)
                else:
                    _exchange(dist, group, buffers, world, me)
            except MooncakeConnectorError:
                raise
            except Exception as e:  # a peer that died, a closed group
                raise UnavailableError(
                    f"the exchange of batch {k + 1} of {len(plan)} among the {world} loading processes "
                    f"failed (a process of the group died or left): {e}") from e
            stats["exchange_s"] += time.perf_counter() - t2
            stats["received_bytes"] += sum(n for who, n in enumerate(b.sizes) if who != me)
            here = {i: b.view(buffers, entries, i, reader) for i in b.read}
            for i in range(begin, b.end):
                name, _, _, _, alias = entries[i]
                stored = by_name[alias] if alias else i
                tensor = here.get(stored)
                if tensor is None:
                    tensor = kept[stored]
                elif entries[stored][0] in needed_later:
                    kept[stored] = tensor
                handed = time.perf_counter()
                yield name, tensor if tensor.device == device else tensor.to(device)
                stats["caller_s"] += time.perf_counter() - handed
            done += sum(entries[i][3] for i in b.read)
            begin = b.end
            if progress is not None:
                progress(done, total)
        if shared is not None:  # the last batch's files, once every process has mapped them
            _agree(dist, status_group, world, me, None, len(plan), len(plan))


def _exchanges_on_device(group: Any) -> bool:
    """Whether the shares are exchanged in device memory: in an NCCL group
    (each owner broadcasts its buffer from its GPU)."""
    return _dist().get_backend(group) == "nccl"


def _read_pieces(reader, pieces: list, views: list[torch.Tensor]) -> None:
    """Reads pieces (index, offset, size, owner, whole) of stored tensors
    into ``views``, byte tensors of their sizes. The store reads into host
    memory: pieces bound for device memory are read into one pinned buffer
    first, then copied (synchronously: the exchange follows on another
    thread's stream)."""
    indices, offsets = [p[0] for p in pieces], [p[1] for p in pieces]
    if all(v.device.type == "cpu" for v in views):
        reader.read_pieces(indices, offsets, [to_dlpack(v) for v in views])
        return
    at = [0]
    for v in views:
        at.append(at[-1] + v.numel())
    host = torch.empty(at[-1], dtype=torch.uint8, pin_memory=True)
    reader.read_pieces(indices, offsets, [to_dlpack(host[at[k]:at[k + 1]]) for k in range(len(views))])
    for k, v in enumerate(views):
        v.copy_(host[at[k]:at[k + 1]])


def _agree(dist, status_group, world: int, me: int, error: Optional[BaseException], k: int,
           batches: int) -> None:
    """Every process learns whether every share of batch ``k`` arrived; if
    one did not, every process raises (the owner its own error)."""
    report = None if error is None else (type(error).__name__, str(error))
    reports: list = [None] * world
    try:
        dist.all_gather_object(reports, report, group=status_group)
    except Exception as e:  # noqa: BLE001 - a peer that died
        if error is not None:
            raise error from e
        raise UnavailableError(
            f"the loading processes could not agree on batch {k + 1} of {batches} "
            f"(a process of the group died or left): {e}") from e
    if error is not None:
        raise error
    for who, r in enumerate(reports):
        if r is not None:
            raise DataLossError(f"process {who} of the {world} loading processes could not fetch its "
                                f"share of batch {k + 1} of {batches}: {r[0]}: {r[1]}")


def _exchange(dist, group, buffers: list[torch.Tensor], world: int, me: int) -> None:
    works = []
    for who in range(world):
        if buffers[who].numel() == 0:
            continue
        works.append(dist.broadcast(buffers[who], group=group, group_src=who, async_op=True))
    for w in works:
        w.wait()
