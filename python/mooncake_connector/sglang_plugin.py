"""SGLang plugin: ``mooncake://`` URLs in SGLang's remote model loading.

Registered in pyproject.toml under the entry-point group
``sglang.srt.plugins`` as ``mooncake``. SGLang's ``load_plugins()`` (run by
the engine and each of its worker processes; ``SGLANG_PLUGINS``, when set,
must name ``mooncake``) calls :func:`register`, then applies the registered
hooks. From then on ``sglang.srt.connector.create_remote_connector`` hands
``mooncake://`` URLs to :func:`mooncake_connector.create_remote_connector`
and every other URL to SGLang's own function, unchanged.

SGLang's ``RemoteModelLoader`` sorts a connector by ``isinstance``: a
``BaseKVConnector`` gets ``weight_iterator(tp_rank)`` and each tensor is
copied into the engine's own (fused, sharded) parameter of that name; a
``BaseFileConnector`` gets ``model.load_weights(weight_iterator())``, the
disk loader's method, which renames, fuses and shards checkpoint tensors
for any tensor-parallel degree. So the hook hands SGLang, per model layout
(docs/model_layout.md):

- ``checkpoint`` (a folder stored with ``save``/``save_directory``): a
  :class:`CheckpointModel`, a ``BaseFileConnector``; at TP > 1 its ranks
  load cooperatively over SGLang's TP group (each fetches a share, the group
  exchanges them; ``MOONCAKE_CONNECTOR_COOPERATIVE=0`` turns that off);
- ``engine`` or no manifest (SGLang's own ``save_model``, or nothing stored
  yet: a save): an :class:`EngineConnector`, a ``BaseKVConnector``, which
  writes what ``save_model`` sets as one save per rank with a manifest, and
  refuses to load an engine model at another TP degree than it was saved
  with. A second hook, on SGLang's KV load, hands it the model so that its
  parameters are filled in place (:class:`ParametersOf`).

:func:`register` declares ``MooncakeConnector`` and :class:`ParametersOf`
virtual subclasses of ``BaseKVConnector`` and :class:`CheckpointModel` one
of ``BaseFileConnector`` (nothing is inherited).

Importing this module needs nothing from SGLang; without SGLang installed
:func:`register` does nothing and returns ``False``.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import os
import threading
from typing import Any, Iterator, Optional

from ._errors import InvalidArgumentError
from ._defaults import DEFAULT_BATCH_BYTES
from .connector import MooncakeConnector, writer_options

logger = logging.getLogger(__name__)

#: The function the hook wraps (SGLang's factory of remote connectors).
TARGET = "sglang.srt.connector.create_remote_connector"
#: SGLang's KV load (engine layout), which the second hook fills in place.
KV_LOAD_TARGET = "sglang.srt.model_loader.loader.RemoteModelLoader._load_model_from_remote_kv"
#: URL schemes this package serves inside SGLang.
SCHEMES = frozenset({"mooncake"})


def is_mooncake_url(url: Any) -> bool:
    """Whether ``url`` (anything SGLang passes as a URL) has one of :data:`SCHEMES`."""
    if not isinstance(url, str) or "://" not in url:
        return False
    return url.split("://", 1)[0].lower() in SCHEMES


def open_connector(url: str, device: Any = None, **kwargs: Any):
    """Our connector for ``url``, with SGLang's ``create_remote_connector``
    signature (SGLang passes ``device=None`` for the default device).

    It stays open until closed or the process exits, as SGLang's own
    connectors do: ``ModelConfig`` opens one without a ``with`` block, keeps
    only its local directory (the model's config files) and drops the
    object. SGLang's ``BaseConnector`` survives that because the signal
    handlers it installs hold it; ours would be collected and its directory
    deleted, so the connectors handed to SGLang are held here instead (closed
    ones are let go at the next open) and closed at exit.
    """
    # A pure client: SGLang closes the connector it saves through
    # (save_model's `with` block), and what Mooncake placed in that
    # connector's own segment would go with it. Options SGLang passes win.
    conn = EngineConnector(url, device=device, **{**writer_options(url), **kwargs})
    with _held_lock:
        _held[:] = [c for c in _held if not c.closed]
        _held.append(conn)
    if conn.model_name:
        manifest = conn.model_manifest(0)
        if manifest is not None and manifest.get("layout") == "checkpoint":
            return CheckpointModel(conn)
    return conn


def _tp_group() -> Optional[Any]:
    """SGLang's tensor-parallel GroupCoordinator when this process is one of
    several ranks of it; None otherwise (or outside SGLang)."""
    try:
        from sglang.srt.distributed import parallel_state as ps  # noqa: PLC0415
    except ImportError:
        return None
    if not ps.model_parallel_is_initialized():
        return None
    try:  # 0.5.23 and later; get_tp_group() is deprecated there
        from sglang.srt.runtime_context import get_parallel  # noqa: PLC0415

        tp = get_parallel().tp_group
    except (ImportError, AttributeError):
        tp = ps.get_tp_group()
    return tp if tp is not None and tp.world_size > 1 else None


class EngineConnector(MooncakeConnector):
    """The connector SGLang gets for an ``engine``-layout model (or one
    without a manifest): SGLang's KV path. Loading an engine model at
    another tensor-parallel degree than it was saved with is an
    ``InvalidArgumentError`` naming both degrees (SGLang would otherwise
    fail on the first parameter name, or worse, on a shape).

    SGLang's ``save_model`` writes a rank with one ``set`` per parameter
    (``{model}/keys/rank_{r}/{name}``), then its files, then closes. Those
    tensors are kept (references, no copy) and written as one save of the
    rank when the connector closes, or before anything else goes through it
    (a read, a file, another key): engine layout, a manifest with each
    tensor's dtype, shape and checksum, the tensor-parallel degree of
    SGLang's group. So a model an engine saves loads batched and verified,
    and SGLang's parameters are filled in place (:class:`ParametersOf`). A
    failed save raises from ``close`` (SGLang's ``with`` block).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[int, dict[str, Any]] = {}

    def set(self, key: str, tensor: Any) -> None:
        import torch  # noqa: PLC0415

        rank_name = self._parameter_key(key) if isinstance(tensor, torch.Tensor) else None
        if rank_name is None:
            self._write_pending()
            super().set(key, tensor)
            return
        rank, name = rank_name
        self._pending.setdefault(rank, {})[name] = tensor.detach()

    def close(self) -> None:
        try:
            if not self.closed:
                self._write_pending()
        finally:
            super().close()

    def _parameter_key(self, key: Any) -> Optional[tuple[int, str]]:
        """(rank, name) when ``key`` is ``{model}/keys/rank_{rank}/{name}``."""
        prefix = f"{self.model_name}/keys/rank_" if self.model_name else None
        if not prefix or not isinstance(key, str) or not key.startswith(prefix):
            return None
        rank, _, name = key[len(prefix):].partition("/")
        return (int(rank), name) if rank.isdigit() and name else None

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        tp = _tp_group()
        degree = max(tp.world_size if tp is not None else 1, max(pending) + 1)
        for rank, tensors in sorted(pending.items()):
            self.save_state_dict(tensors, rank, world_size=degree, layout="engine")
            logger.info("mooncake: saved rank %d of %r: %d tensors, %.3f GiB (engine layout, tensor-parallel "
                        "degree %d)", rank, self.model_name, len(tensors),
                        sum(t.numel() * t.element_size() for t in tensors.values()) / 2**30, degree)

    def weight_iterator(self, rank: int = 0, **options: Any) -> Iterator[tuple[str, Any]]:
        self._check_degree(rank)
        return super().weight_iterator(rank, **options)

    def fill_in_place(self, parameters: dict[str, Any], rank: int) -> Optional[str]:
        """Fills an engine's own parameters (``{name: tensor}``, SGLang's
        filtered state dict) with the stored rank's tensors in place, as
        :meth:`load_into` does (on a GPU through the pinned pipeline), when
        the stored tensors are exactly those names, dtypes and shapes.
        Returns None when it filled them, else why not (the caller copies
        from :meth:`weight_iterator` instead)."""
        from . import _model  # noqa: PLC0415

        self._check_degree(rank)
        # No huge-page advice: SGLang's parameters mostly lie in its malloc
        # heap, which filled in 2.9 s advised against 1.5 s not (1 GiB, 2
        # cores; docs/performance.md). On a GPU nothing is advised anyway.
        reader = self._model().reader(rank, True, _batch_bytes(), None, advise_huge_pages=False)
        stored = reader.tensors()
        # The names first: a stored tensor no parameter asks for shows only
        # after a load, and nothing may be written then.
        names = {entry[0] for entry in stored}
        if names != set(parameters):
            missing, extra = sorted(set(parameters) - names), sorted(names - set(parameters))
            return f"the stored tensors are not the engine's parameters (not stored: {missing[:3]}, " \
                   f"not parameters: {extra[:3]})"
        try:
            _model.load_into(self._model(), rank, parameters, reader=reader)
        except InvalidArgumentError as e:
            # Another dtype or shape (LoRA padding): with a manifest the load
            # checks every destination before it writes any; without one,
            # each before it writes it. SGLang's copies write them all again.
            return str(e)
        self.load_stats = {"filled_in_place": len(parameters),
                           "bytes": sum(p.numel() * p.element_size() for p in parameters.values())}
        return None

    def _check_degree(self, rank: int) -> None:
        saved = self._saved_degree(rank) if self.model_name else None
        tp = _tp_group()
        serving = tp.world_size if tp is not None else 1
        if saved is not None and saved != serving:
            raise InvalidArgumentError(
                f"model '{self.model_name}' was saved by an engine at tensor-parallel degree {saved} "
                f"(engine layout: its per-rank fused parameters) and cannot be loaded at degree "
                f"{serving}; serve it at TP {saved}, or store the model's folder with "
                f"`mooncake-connector save DIR URL` (checkpoint layout: any degree)")

    def _saved_degree(self, rank: int) -> Optional[int]:
        """The TP degree the model was saved at: its manifest's world_size,
        or, for a model SGLang's save_model wrote (no manifest), the number
        of rank folders stored (ranks 0..N-1). None when nothing is stored
        (the load then fails on its own, naming what is missing)."""
        manifest = self.model_manifest(rank)
        if manifest is not None:
            return manifest["world_size"] if manifest.get("layout", "engine") == "engine" else None
        prefix = f"{self.model_name}/keys/rank_"
        ranks = {key[len(prefix):].split("/", 1)[0] for key in self.list(prefix)}
        numbers = sorted(int(r) for r in ranks if r.isdigit())
        return numbers[-1] + 1 if numbers else None


def _after_pending_writes(method: Any) -> Any:
    @functools.wraps(method)
    def wrapper(self: EngineConnector, *args: Any, **kwargs: Any) -> Any:
        self._write_pending()
        return method(self, *args, **kwargs)
    return wrapper


# Whatever reads or writes through an engine connector sees the parameters
# set before it written first.
for _name in ("get", "getstr", "getbytes", "setstr", "setbytes", "list", "exists", "remove", "weight_iterator",
              "load_state_dict", "load_into", "save_state_dict", "save_files", "save_directory", "model_manifest",
              "inspect_model", "verify_model", "remove_model", "list_models", "pull_files", "fill_in_place"):
    setattr(EngineConnector, _name, _after_pending_writes(getattr(EngineConnector, _name)))


def _batch_bytes() -> int:
    """A cooperative load's batch size: MOONCAKE_CONNECTOR_BATCH_BYTES (SGLang
    passes no options), else 256 MiB. Each process holds about two batches
    at once; a tensor larger than a batch's share is split between ranks."""
    value = os.environ.get("MOONCAKE_CONNECTOR_BATCH_BYTES")
    if value is None:
        return DEFAULT_BATCH_BYTES
    try:
        if int(value) > 0:
            return int(value)
    except ValueError:
        pass
    raise InvalidArgumentError(f"MOONCAKE_CONNECTOR_BATCH_BYTES={value!r}: a positive number of bytes")


class CheckpointModel:
    """What SGLang gets for a ``checkpoint``-layout model: a
    ``BaseFileConnector`` (registered by :func:`register`), so SGLang's
    remote loader calls ``model.load_weights(weight_iterator())``. Every
    other attribute is the connector's (``pull_files``, ``get_local_dir``,
    ``close`` ...)."""

    def __init__(self, connector: MooncakeConnector) -> None:
        self.connector = connector

    def weight_iterator(self, rank: int = 0, **options: Any) -> Iterator[tuple[str, Any]]:
        """The checkpoint's tensors (stored as rank 0). Inside a
        tensor-parallel group of SGLang at TP > 1, a cooperative load over
        that group (its gloo group on the CPU; on GPUs the NCCL group moves
        the bytes and the gloo group the agreement)."""
        tp = _tp_group()
        if tp is not None and os.environ.get("MOONCAKE_CONNECTOR_COOPERATIVE", "1") != "0":
            on_gpu = self.connector.device.startswith("cuda") and tp.device_group is not None
            group = tp.device_group if on_gpu else tp.cpu_group
            return self.connector._cooperative(  # noqa: SLF001 - the plugin is part of the package
                rank, group, tp.cpu_group, verify=options.get("verify", True),
                batch_bytes=options.get("batch_bytes", _batch_bytes()),
                progress=options.get("progress"))
        return self.connector.weight_iterator(rank, **options)

    def glob(self, allow_pattern: Any = None) -> list[str]:
        """The model's stored file keys matching ``allow_pattern`` (fnmatch),
        as BaseFileConnector asks."""
        import fnmatch  # noqa: PLC0415

        keys = self.connector.list(f"{self.connector.model_name}/files/")
        if not allow_pattern:
            return keys
        patterns = [allow_pattern] if isinstance(allow_pattern, str) else list(allow_pattern)
        return [k for k in keys if any(fnmatch.fnmatch(k, p) or fnmatch.fnmatch(k.rsplit("/", 1)[-1], p)
                                       for p in patterns)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connector, name)

    def __enter__(self) -> "CheckpointModel":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.connector.close()

    def __repr__(self) -> str:
        return f"CheckpointModel({self.connector!r})"


class ParametersOf:
    """What SGLang's KV load gets when our hook has the model at hand: a
    ``BaseKVConnector`` (registered by :func:`register`) whose
    ``weight_iterator(rank)`` first fills the model's parameters in place
    (:meth:`EngineConnector.fill_in_place`) and then yields each parameter
    itself, so that SGLang's ``param.data.copy_(tensor)`` copies a tensor
    onto itself, which torch skips. When the stored tensors do not match the
    parameters exactly (LoRA padding, another model, no manifest) it yields
    the stored tensors as before and SGLang copies and checks them."""

    def __init__(self, connector: EngineConnector, model: Any) -> None:
        self.connector = connector
        self.model = model

    def weight_iterator(self, rank: int = 0) -> Iterator[tuple[str, Any]]:
        from sglang.srt.model_loader.loader import ShardedStateLoader  # noqa: PLC0415

        params = {name: p.data for name, p in
                  ShardedStateLoader._filter_subtensors(self.model.state_dict()).items()}  # noqa: SLF001
        why_not = self.connector.fill_in_place(params, rank)
        if why_not is None:
            logger.info("mooncake: filled %d parameters of %r in place", len(params), self.connector.model_name)
            return iter(list(params.items()))
        logger.info("mooncake: loading %r by copying each tensor: %s", self.connector.model_name, why_not)
        return self.connector.weight_iterator(rank)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connector, name)

    def __repr__(self) -> str:
        return f"ParametersOf({self.connector!r})"


def fill_parameters_in_place(original, loader: Any, model: Any, model_config: Any, client: Any):
    """The AROUND hook on SGLang's KV load: our engine connectors fill the
    model's parameters in place (:class:`ParametersOf`);
    ``MOONCAKE_CONNECTOR_IN_PLACE=0`` turns that off."""
    if isinstance(client, EngineConnector) and os.environ.get("MOONCAKE_CONNECTOR_IN_PLACE", "1") != "0":
        client = ParametersOf(client, model)
    return original(loader, model, model_config, client)


_held: list = []
_held_lock = threading.Lock()


def last_load_stats() -> dict:
    """The ``load_stats`` of the latest connector SGLang opened in this
    process that has any ({} if none): what its load fetched, received or
    filled in place."""
    with _held_lock:
        return next((c.load_stats for c in reversed(_held) if c.load_stats), {})


def _close_held() -> None:
    with _held_lock:
        held = list(_held)
        _held.clear()
    for conn in held:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - at exit; one failure must not keep the rest open
            logger.exception("closing %r at exit", conn)


atexit.register(_close_held)


def route_create_remote_connector(original, *args: Any, **kwargs: Any):
    """The AROUND hook: ``mooncake://`` URLs to us, everything else to ``original``."""
    url = args[0] if args else kwargs.get("url")
    if is_mooncake_url(url):
        return open_connector(*args, **kwargs)
    return original(*args, **kwargs)


def register() -> bool:
    """The plugin function SGLang calls. Registers the hook and declares
    ``MooncakeConnector`` a ``BaseKVConnector``; calling it again changes
    nothing. Returns whether SGLang is installed.

    The hook takes effect when SGLang applies the registered hooks
    (``HookRegistry.apply_hooks()``, which ``load_plugins()`` runs after the
    plugins); a caller of this function outside ``load_plugins()`` runs that
    itself.
    """
    if importlib.util.find_spec("sglang") is None:
        logger.debug("sglang is not installed; the mooncake plugin has nothing to do")
        return False
    from sglang.srt.connector.base_connector import BaseFileConnector, BaseKVConnector  # noqa: PLC0415
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType  # noqa: PLC0415

    if not issubclass(MooncakeConnector, BaseKVConnector):
        BaseKVConnector.register(MooncakeConnector)
    if not issubclass(ParametersOf, BaseKVConnector):
        BaseKVConnector.register(ParametersOf)
    if not issubclass(CheckpointModel, BaseFileConnector):
        BaseFileConnector.register(CheckpointModel)
    for target, hook in ((TARGET, route_create_remote_connector), (KV_LOAD_TARGET, fill_parameters_in_place)):
        if not _hook_registered(HookRegistry, target, hook):
            HookRegistry.register(target, hook, HookType.AROUND)
    return True


def _hook_registered(registry: Any, target: str, hook: Any) -> bool:
    # HookRegistry appends every registration (a second one would wrap the
    # target twice) and offers no lookup, so its table is read directly.
    hooks = getattr(registry, "_hooks", {})
    return any(h is hook for _, h, *_ in hooks.get(target, ()))
