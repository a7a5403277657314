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
  refuses to load an engine model at another TP degree than it was saved
  with.

:func:`register` declares ``MooncakeConnector`` a virtual subclass of
``BaseKVConnector`` and :class:`CheckpointModel` one of
``BaseFileConnector`` (nothing is inherited).

Importing this module needs nothing from SGLang; without SGLang installed
:func:`register` does nothing and returns ``False``.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import threading
from typing import Any, Iterator, Optional

from ._errors import InvalidArgumentError
from ._model import DEFAULT_BATCH_BYTES
from .connector import MooncakeConnector, writer_options

logger = logging.getLogger(__name__)

#: The function the hook wraps (SGLang's factory of remote connectors).
TARGET = "sglang.srt.connector.create_remote_connector"
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
    fail on the first parameter name, or worse, on a shape)."""

    def weight_iterator(self, rank: int = 0, **options: Any) -> Iterator[tuple[str, Any]]:
        saved = self._saved_degree(rank) if self.model_name else None
        tp = _tp_group()
        serving = tp.world_size if tp is not None else 1
        if saved is not None and saved != serving:
            from ._errors import InvalidArgumentError  # noqa: PLC0415

            raise InvalidArgumentError(
                f"model '{self.model_name}' was saved by an engine at tensor-parallel degree {saved} "
                f"(engine layout: its per-rank fused parameters) and cannot be loaded at degree "
                f"{serving}; serve it at TP {saved}, or store the model's folder with "
                f"`mooncake-connector save DIR URL` (checkpoint layout: any degree)")
        return super().weight_iterator(rank, **options)

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


_held: list = []
_held_lock = threading.Lock()


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
    if not issubclass(CheckpointModel, BaseFileConnector):
        BaseFileConnector.register(CheckpointModel)
    if not _hook_registered(HookRegistry):
        HookRegistry.register(TARGET, route_create_remote_connector, HookType.AROUND)
    return True


def _hook_registered(registry: Any) -> bool:
    # HookRegistry appends every registration (a second one would wrap the
    # target twice) and offers no lookup, so its table is read directly.
    hooks = getattr(registry, "_hooks", {})
    return any(hook is route_create_remote_connector for _, hook, *_ in hooks.get(TARGET, ()))
