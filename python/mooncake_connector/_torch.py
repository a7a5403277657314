"""PyTorch, imported when a call handles tensors (see _defaults), or a clear
error saying how to install it: torch is an optional dependency (the
``torch`` extra), so that keys, strings, files and the CLI's model listing
work without it."""

try:
    import torch  # noqa: F401 (re-exported)
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "this needs PyTorch, which is not installed: pip install 'mooncake-connector[torch]' "
        "(or a CPU-only build: pip install torch --index-url https://download.pytorch.org/whl/cpu)") from e
