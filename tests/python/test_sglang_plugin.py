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


def test_an_engine_save_is_written_as_one_save_with_a_manifest():
    """SGLang's save_model sets each parameter of its rank: the engine
    connector writes them as one save of the rank (engine layout, manifest,
    checksums) at close, or before anything else goes through it."""
    import torch

    from mooncake_connector import create_remote_connector

    params = {"model.norm.weight": torch.arange(8, dtype=torch.bfloat16),
              "lm_head.weight": torch.randn(4, 8)}
    url = "memory:///sglang-plugin-test/engine"
    r = create_remote_connector(url)  # keeps the in-process store alive past c's close
    c = sglang_plugin.EngineConnector(url)
    for name, t in params.items():
        c.set(f"sglang-plugin-test/engine/keys/rank_0/{name}", t)
    c.set("sglang-plugin-test/engine/keys/rank_1/lm_head.weight", params["lm_head.weight"])
    assert r.model_manifest(0) is None  # not yet written
    assert c.model_manifest(0)["layout"] == "engine"  # written before the read
    assert torch.equal(c.get("sglang-plugin-test/engine/keys/rank_0/lm_head.weight"), params["lm_head.weight"])
    c.set("elsewhere", torch.ones(2))  # not a parameter key: written at once, after the pending rank
    c.setstr("sglang-plugin-test/engine/files/config.json", "{}")
    c.close()
    with r:
        parts = {rank: r.model_manifest(rank) for rank in (0, 1)}
        assert parts[0]["tensors"] == 2 and parts[1]["tensors"] == 1
        assert {p["world_size"] for p in parts.values()} == {2}  # rank 1 seen: degree at least 2
        assert torch.equal(r.load_state_dict(0)["model.norm.weight"], params["model.norm.weight"])
        assert [n for n, _ in r.weight_iterator(1)] == ["lm_head.weight"]
        assert torch.equal(r.get("elsewhere"), torch.ones(2))


def test_an_engine_save_that_fails_raises_from_close():
    import pytest
    import torch

    r = sglang_plugin.EngineConnector("memory:///sglang-plugin-test/failing")
    c = sglang_plugin.EngineConnector("memory:///sglang-plugin-test/failing")
    c.set("sglang-plugin-test/failing/keys/rank_0/w", torch.empty(2, device="meta"))  # no data to write
    with pytest.raises(NotImplementedError, match="meta"):
        c.close()
    assert c.closed
    with r:
        assert r.model_manifest(0) is None and r.list("sglang-plugin-test/failing/") == []
