"""The SGLang plugin's behaviour where SGLang is not installed (this venv);
with SGLang, tests/sglang runs its real loader through the plugin."""

from __future__ import annotations

import importlib.metadata
import importlib.util

from mooncake_connector import sglang_plugin


def test_without_sglang_register_is_a_harmless_no_op():
    assert importlib.util.find_spec("sglang") is None
    assert sglang_plugin.register() is False
    assert sglang_plugin.register() is False


def test_entry_point_names_the_plugin_function():
    eps = importlib.metadata.entry_points(group="sglang.srt.plugins")
    [ep] = [e for e in eps if e.name == "mooncake"]
    assert ep.load() is sglang_plugin.register


def test_only_mooncake_urls_are_ours():
    assert sglang_plugin.is_mooncake_url("mooncake:///org/model")
    assert sglang_plugin.is_mooncake_url("MOONCAKE://h:1/m")
    for url in ("redis://h:1/m", "s3://b/m", "memory://x", "/local/path", None, 3, "mooncake"):
        assert not sglang_plugin.is_mooncake_url(url)
