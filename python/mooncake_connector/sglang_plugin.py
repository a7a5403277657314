"""SGLang plugin: ``mooncake://`` URLs in SGLang's remote model loading.

Registered in pyproject.toml under the entry-point group
``sglang.srt.plugins`` as ``mooncake``. SGLang's ``load_plugins()`` (run by
the engine and each of its worker processes; ``SGLANG_PLUGINS``, when set,
must name ``mooncake``) calls :func:`register`, then applies the registered
hooks. From then on ``sglang.srt.connector.create_remote_connector`` hands
``mooncake://`` URLs to :func:`mooncake_connector.create_remote_connector`
and every other URL to SGLang's own function, unchanged.

SGLang sorts a connector by ``isinstance`` against its ``BaseKVConnector``,
an abstract base class; :func:`register` declares ``MooncakeConnector`` a
virtual subclass of it (nothing is inherited).

Importing this module needs nothing from SGLang; without SGLang installed
:func:`register` does nothing and returns ``False``.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import threading
from typing import Any

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
    from .connector import create_remote_connector  # noqa: PLC0415

    conn = create_remote_connector(url, device=device, **kwargs)
    with _held_lock:
        _held[:] = [c for c in _held if not c.closed]
        _held.append(conn)
    return conn


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
    from sglang.srt.connector.base_connector import BaseKVConnector  # noqa: PLC0415
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType  # noqa: PLC0415

    from .connector import MooncakeConnector  # noqa: PLC0415

    if not issubclass(MooncakeConnector, BaseKVConnector):
        BaseKVConnector.register(MooncakeConnector)
    if not _hook_registered(HookRegistry):
        HookRegistry.register(TARGET, route_create_remote_connector, HookType.AROUND)
    return True


def _hook_registered(registry: Any) -> bool:
    # HookRegistry appends every registration (a second one would wrap the
    # target twice) and offers no lookup, so its table is read directly.
    hooks = getattr(registry, "_hooks", {})
    return any(hook is route_create_remote_connector for _, hook, *_ in hooks.get(TARGET, ()))
