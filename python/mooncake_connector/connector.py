"""The Python connector object: SGLang's ``BaseKVConnector`` API over the C++
core. Only type conversion happens here."""

from __future__ import annotations

import os
import threading
import urllib.parse
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional

import numpy as np

from . import _impl
from ._defaults import DEFAULT_BATCH_BYTES, ITERATOR_BATCH_BYTES, SAVE_BATCH_BYTES
from ._errors import InvalidArgumentError

if TYPE_CHECKING:
    import torch


class MooncakeConnector:
    """A key-value connector for tensors and strings.

    Drop-in for SGLang's ``BaseKVConnector``: ``get``/``getstr`` return ``None``
    for a missing key, ``set``/``setstr`` overwrite, ``list(prefix)`` returns
    the matching keys. Build one with :func:`create_remote_connector`.
    """

    def __init__(self, url: str, device: str | torch.device | None = "cpu", **options: Any) -> None:
        self.url = url
        # SGLang passes device=None for "the default", which is the CPU.
        self.device = "cpu" if device is None else str(device)
        #: What the last cooperative load (``group=``) of this connector
        #: fetched and received: world, group_rank, total_bytes,
        #: fetched_bytes, received_bytes, batches, seconds.
        self.load_stats: dict[str, Any] = {}
        texts = {k: _option_text(v) for k, v in options.items()}
        self._impl = _impl.Connector.create(url, self.device, texts)
        # Memory this connector contributes to the cluster: what Mooncake
        # places there goes when the process exits (see _saving).
        self._own_segment = _impl.own_segment_bytes(url, texts)
        self._saved = False
        # The model this URL names, opened once: it remembers the manifests
        # it read (a model lost from the store later is reported as lost).
        self._model_handle: Optional[_impl.Model] = None
        self._model_lock = threading.Lock()

    # -- BaseKVConnector -------------------------------------------------
    def get(self, key: str) -> Optional[torch.Tensor]:
        capsule = self._impl.get_tensor(_key(key))
        if capsule is None:
            return None
        from ._torch import torch  # imported on first use (see _defaults)
        tensor = torch.from_dlpack(capsule)
        return tensor if self.device.startswith("cpu") else tensor.to(self.device)

    def getstr(self, key: str) -> Optional[str]:
        return self._impl.getstr(_key(key))

    def set(self, key: str, tensor: Any) -> None:
        from ._tensors import as_cpu_tensor, to_dlpack
        self._impl.set_tensor(_key(key), to_dlpack(as_cpu_tensor(tensor)))

    def setstr(self, key: str, obj: str) -> None:
        if not isinstance(obj, str):
            raise TypeError(f"setstr expects a str, got {type(obj).__name__}")
        obj.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates
        self._impl.setstr(_key(key), obj)

    def list(self, prefix: str = "") -> list[str]:
        return self._impl.list(_key(prefix))

    # -- extras ------------------------------------------------------------
    def setbytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Stores raw bytes (file contents, foreign blobs), replacing any value."""
        view = memoryview(data).cast("B")
        self._impl.setbytes(_key(key), np.frombuffer(view, dtype=np.uint8) if view.nbytes else
                            np.empty(0, dtype=np.uint8))

    def getbytes(self, key: str) -> Optional[bytes]:
        """The raw value of ``key``; ``None`` if it is missing."""
        return self._impl.getbytes(_key(key))

    def exists(self, key: str) -> bool:
        return self._impl.exists(_key(key))

    def remove(self, key: str) -> bool:
        """Deletes ``key``; ``True`` if it existed."""
        return self._impl.remove(_key(key))

    @property
    def model_name(self) -> str:
        """The URL path: a model name or key prefix."""
        return self._impl.model_name

    # -- model weights (the URL path names the model) ---------------------
    def weight_iterator(self, rank: int = 0, *, verify: bool = True,
                        batch_bytes: Optional[int] = None,
                        progress: Optional[Callable[[int, int], None]] = None,
                        group: Any = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yields ``(name, tensor)`` for every tensor of tensor-parallel rank
        ``rank`` (keys ``{model}/keys/rank_{rank}/{name}``), on this
        connector's device, read in batches of up to ``batch_bytes`` straight
        into the tensors' memory. With a manifest, each tensor is checked
        against it (dtype, shape and, unless ``verify=False``, its checksum)
        and a tensor the store lost is ``DataLossError`` naming it; without
        one (a model SGLang wrote), the keys are listed. ``batch_bytes``
        defaults to 128 MiB (about one batch and part of the next are in
        memory at once), 256 MiB with ``group``.

        ``group`` (a ``torch.distributed`` process group, e.g. a
        tensor-parallel group whose processes all load the same rank):
        each process fetches a disjoint share of the bytes (balanced, whole
        tensors) and verifies it, the group exchanges the shares (through
        /dev/shm when all run on one host, else a broadcast: NCCL on GPUs,
        gloo on CPUs) overlapped with the next fetch, and every
        process yields every tensor in the same order. Every process of the
        group must iterate to the end. A lost tensor, a checksum mismatch or
        a process that dies fails every process. :attr:`load_stats` then
        says what this process fetched and received. Needs a manifest."""
        from . import _group, _model
        if group is not None and _group.group_size(group) > 1:
            return self._cooperative(rank, group, None, verify=verify, progress=progress,
                                     batch_bytes=DEFAULT_BATCH_BYTES if batch_bytes is None else batch_bytes)
        if batch_bytes is None:
            batch_bytes = ITERATOR_BATCH_BYTES
        return _held_by(self, _model.weight_iterator(self._model(), rank, device=self.device, verify=verify,
                                                     batch_bytes=batch_bytes, progress=progress))

    def _cooperative(self, rank: int, group: Any, status_group: Any, **options: Any,
                     ) -> Iterator[tuple[str, torch.Tensor]]:
        from . import _group, _model
        self.load_stats = {}
        return _held_by(self, _group.weight_iterator(self._model(), rank, group, device=_model._device(self.device),
                                                     stats=self.load_stats, status_group=status_group,
                                                     **options))

    def load_state_dict(self, rank: int = 0, device: str | torch.device | None = None, *,
                        verify: bool = True, batch_bytes: int = DEFAULT_BATCH_BYTES,
                        progress: Optional[Callable[[int, int], None]] = None,
                        group: Any = None) -> dict[str, torch.Tensor]:
        """The rank's tensors as a dict (tied weights share storage), on
        ``device`` (default: this connector's). ``group``: a cooperative
        load, as :meth:`weight_iterator` says."""
        from . import _group, _model
        if group is not None and _group.group_size(group) > 1:
            target = _model._device(device or self.device)
            return {name: t if t.device == target else t.to(target)
                    for name, t in self.weight_iterator(rank, verify=verify, batch_bytes=batch_bytes,
                                                        progress=progress, group=group)}
        return _model.load_state_dict(self._model(), rank, device=device or self.device,
                                      verify=verify, batch_bytes=batch_bytes, progress=progress)

    def load_into(self, tensors: Mapping[str, torch.Tensor], rank: int = 0, *, verify: bool = True,
                  strict: bool = True, batch_bytes: int = DEFAULT_BATCH_BYTES,
                  progress: Optional[Callable[[int, int], None]] = None) -> list[str]:
        """Fills tensors the caller allocated (an engine's parameters) in
        place, without allocating: contiguous CPU tensors are read into
        directly. Every name must be stored with the same dtype and shape.
        Returns the stored names not asked for; ``strict`` (default) raises
        ``KeyError`` if there are any."""
        from . import _model
        return _model.load_into(self._model(), rank, tensors, verify=verify, strict=strict,
                                batch_bytes=batch_bytes, progress=progress)

    def save_state_dict(self, state_dict: Mapping[str, Any], rank: int = 0, *, world_size: int = 1,
                        layout: str = "engine", batch_bytes: int = SAVE_BATCH_BYTES,
                        progress: Optional[Callable[[int, int], None]] = None, pin: bool = True) -> None:
        """Stores rank ``rank``'s whole state dict in SGLang's layout plus a
        manifest, in batches of up to ``batch_bytes`` (default 1 GiB, one
        native write call each; the unit of progress, and what a resumed save
        writes again). Tensors sharing storage are stored once. Tensors on
        a CUDA device are copied to the host a batch at a time (at most 128
        MiB each, two in flight, through pinned buffers, on torch's current
        stream), so a GPU engine's save never holds a host copy of its whole
        rank (a non-contiguous one is made contiguous on its device first);
        tensors on a second CUDA device are copied to the CPU first.
        Saving again resumes an interrupted save (values already stored with the same
        checksum are skipped) and removes the rank's tensors ``state_dict``
        lacks.

        ``layout`` is recorded in the manifest: ``"engine"`` (default) for an
        engine's own per-rank state dict (SGLang loads it only at the same
        tensor-parallel degree, ``world_size``); ``"checkpoint"`` for a
        checkpoint's own names, unsharded (rank 0 of 1), which SGLang renames
        and shards itself at any degree, as :meth:`save_directory` writes.

        ``pin`` (default): written with Mooncake's hard pin, so memory
        pressure never evicts the model (``remove_model`` frees it);
        ``pin=False`` leaves the connector's own ``pin`` option, under which
        Mooncake may evict values (``inspect_model`` then says ``damaged``).
        The same holds for :meth:`save_files` and :meth:`save_directory`.

        Through a connector that contributes memory of its own to the
        cluster (``global_segment_size`` > 0), Mooncake may place the values
        there, and they go when the process exits: such a save warns
        (:class:`OwnSegmentWarning`); save through a pure client for models
        that must outlive the process."""
        from . import _model
        self._saving()
        _model.save_state_dict(self._model(), rank, state_dict, world_size=world_size, layout=layout,
                               batch_bytes=batch_bytes, progress=progress, pin=pin)

    def save_files(self, files: Mapping[str, bytes], *,
                   progress: Optional[Callable[[int, int], None]] = None, pin: bool = True) -> None:
        """Stores ``{relative path: bytes}`` under ``{model}/files/`` with a
        manifest (the same resume and cleanup rules as tensors)."""
        paths = list(files)
        arrays = [np.frombuffer(memoryview(files[p]).cast("B"), dtype=np.uint8) if len(files[p])
                  else np.empty(0, dtype=np.uint8) for p in paths]
        self._saving()
        self._model().save_files(paths, arrays, SAVE_BATCH_BYTES, progress, pin)

    def save_directory(self, path: str | os.PathLike[str], *,
                       progress: Optional[Callable[[int, int], None]] = None,
                       follow_links_outside: bool = False, pin: bool = True) -> int:
        """Stores a Hugging Face style model directory as rank 0: the
        tensors of its ``*.safetensors`` shards and its other files (configs,
        tokenizer, templates; not hidden files or other weight formats).

        Links to files and folders are followed and stored under the link's
        own name; a Hugging Face cache snapshot (``snapshots/REV``, links
        into the repository's ``blobs``) saves as it is. A link leading
        outside the folder is refused unless ``follow_links_outside``.

        Returns the bytes written: what an earlier save of the same folder
        left intact (read back and checked) is not written again."""
        self._saving()
        return self._model().save_directory(os.fspath(path), SAVE_BATCH_BYTES, progress,
                                     follow_links_outside, pin)

    def model_manifest(self, rank: Optional[int] = 0) -> Optional[dict[str, Any]]:
        """The summary of rank ``rank``'s manifest part (``None``: the
        files' part): state, world_size, layout, tensors, bytes; ``None`` when
        there is none. One read, no listing."""
        return self._model().manifest(rank)

    def inspect_model(self) -> dict[str, Any]:
        """What is stored of this model: ranks, sizes, manifest parts, and
        why it is not complete if it is not."""
        return self._model().inspect()

    def verify_model(self, *, progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
        """Reads every tensor and file back and checks it against the
        manifest; ``problems`` lists what does not match."""
        return self._model().verify(progress)

    def remove_model(self) -> int:
        """Removes this model (marked not complete first, its manifest last);
        returns the keys removed."""
        return self._model().remove()

    def list_models(self) -> list[dict[str, Any]]:
        """The models stored under this URL's path (all when it is empty)."""
        return _impl.list_models(self._impl)

    def _model(self) -> "_impl.Model":
        with self._model_lock:
            if self._model_handle is None:
                self._model_handle = _impl.Model.open(self._impl)
            return self._model_handle

    # -- BaseConnector -----------------------------------------------------
    def get_local_dir(self) -> str:
        """A private temporary directory, deleted by :meth:`close`."""
        return self._impl.get_local_dir()

    def pull_files(self, allow_pattern: Optional[list[str]] = None,
                   ignore_pattern: Optional[list[str]] = None) -> list[str]:
        """SGLang's ``pull_files``: writes the model's files (stored under
        ``{model}/files/``) into :meth:`get_local_dir`, keeping their relative
        paths, and returns those paths. ``allow_pattern`` keeps only files
        matching one of its fnmatch patterns, then ``ignore_pattern`` drops
        those matching one of its; a pattern counts when it matches the whole
        key (as in SGLang) or the relative path.

        With a manifest, only the files it lists are pulled, each checked
        (size, XXH3): ``FailedPreconditionError`` when the files' save is
        not complete, ``DataLossError`` naming a listed file that is missing
        or differs, ``AbortedError`` when a save replaced them meanwhile.
        A model SGLang saved (no manifest) pulls what is stored. Nothing is
        written unless every file was read (and checked). A stored name that
        is absolute or has ``..`` raises ``DataLossError``; symlinks in the
        directory are never followed."""
        return self._model().pull_files(_patterns(allow_pattern), _patterns(ignore_pattern))

    def _saving(self) -> None:
        """Warns, once per connector, that a save lands in memory that goes
        with this process when the connector contributes a segment."""
        if self._own_segment and not self._saved:
            warnings.warn(
                f"saving model {self.model_name!r} through a connector that contributes "
                f"{self._own_segment / (1 << 30):.2f} GiB of this process's memory to Mooncake "
                "(global_segment_size / MOONCAKE_GLOBAL_SEGMENT_SIZE): Mooncake may store the values there, "
                "only in this process's memory, and they are gone when the process exits. For a model that "
                "must outlive it, save through a pure client (global_segment_size=0, as the CLI does).",
                OwnSegmentWarning, stacklevel=3)
        self._saved = True

    def close(self) -> None:
        """Releases the store (and a Mooncake client no other open connector
        shares). Idempotent; afterwards every other method raises
        ``FailedPreconditionError``. Loads, saves and key operations under way
        on other threads end as they would have or raise that error at their
        next step; the client goes when the last of them ends. Tensors already
        returned stay valid.

        A connector that contributes a segment and saved a model warns
        (:class:`OwnSegmentWarning`) that what Mooncake placed there goes
        with the last connector sharing its client, or the process."""
        if self._own_segment and self._saved and not self._impl.closed:
            warnings.warn(
                f"closing connector {self.url!r}: its segment ({self._own_segment / (1 << 30):.2f} GiB of this "
                "process's memory) goes when the last connector sharing its Mooncake client closes or the "
                "process exits, and with it every value Mooncake placed there, the models this connector "
                "saved included (verify them from another process with `mooncake-connector verify`)",
                OwnSegmentWarning, stacklevel=2)
        self._impl.close()

    @property
    def closed(self) -> bool:
        return self._impl.closed

    def __enter__(self) -> "MooncakeConnector":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        impl = getattr(self, "_impl", None)
        if impl is not None and not impl.closed:
            impl.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"MooncakeConnector({self._impl.url!r}, device={self.device!r}, {state})"


class OwnSegmentWarning(UserWarning):
    """A save went through a connector that contributes memory of its own to
    the cluster: Mooncake may keep the values only there, and they go with
    the process."""


def writer_options(url: str) -> dict[str, str]:
    """Options for a mooncake:// connector whose writes must outlive it (the
    CLI's, the SGLang plugin's): a pure client (no segment of its own,
    whatever MOONCAKE_GLOBAL_SEGMENT_SIZE says; Mooncake may place what a
    connector stores in its own segment, which goes when the connector
    closes or the process exits), and Mooncake's hard pin unless the URL's
    ``pin=`` or MOONCAKE_PIN chooses (an unpinned value may be evicted under
    memory pressure). Empty for other schemes; in standalone-client mode
    (MOONCAKE_CLIENT) the segment is the client process's, so only the pin."""
    if url.split("://", 1)[0].lower() != "mooncake":
        return {}
    options = {}
    if not os.environ.get("MOONCAKE_CLIENT"):
        options["global_segment_size"] = "0"
    if chosen_pin(url) is None:
        options["pin"] = "hard"
    return options


def chosen_pin(url: str) -> Optional[str]:
    """The pin a mooncake:// URL's ``pin=`` or MOONCAKE_PIN chooses; None
    when neither does."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return (query.get("pin") or [None])[0] or os.environ.get("MOONCAKE_PIN") or None


def _held_by(owner: Any, iterator: Iterator[Any]) -> Iterator[Any]:
    """``iterator``, holding ``owner`` until it is exhausted or dropped: in
    ``for x in create_remote_connector(url).weight_iterator(): ...`` nothing
    else holds the connector, which would otherwise be collected (and
    closed) while its iterator runs."""
    yield from iterator
    del owner


def _patterns(patterns: Any) -> Optional[list[str]]:
    if patterns is None:
        return None
    if isinstance(patterns, str):  # one pattern given without a list
        return [patterns]
    return [str(p) for p in patterns]


def _key(key: Any) -> str:
    """``key`` if the C++ core can take it; a clear error otherwise."""
    if not isinstance(key, str):
        raise TypeError(f"a key must be a str, got {type(key).__name__}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgumentError(f"key {key!r} is not valid UTF-8 text ({e.reason})") from None
    return key


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def create_remote_connector(url: str, device: str | torch.device | None = "cpu",
                            **kwargs: Any) -> MooncakeConnector:
    """Opens a connector for ``url`` (see :func:`supported_schemes`).

    Raises ``InvalidArgumentError`` (a ``ValueError``) for a malformed URL, an
    unknown scheme or option. Keyword arguments are backend options and
    override the URL's query options of the same name.
    """
    return MooncakeConnector(url, device=device, **kwargs)


def supported_schemes() -> list[str]:
    return list(_impl.supported_schemes())
