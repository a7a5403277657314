"""SGLang's real remote model loader over ``mooncake://``, through our plugin.

A tiny GPT-2 with random weights (SGLang's ``dummy`` load format) is saved by
``RemoteModelLoader.save_model`` into a real Mooncake instance, its config
comes back through ``ModelConfig("mooncake:///NAME")`` (our ``pull_files``),
and SGLang's ``remote`` load format loads it back (our ``weight_iterator``);
the two state dicts must be equal bit for bit. Everything runs on the CPU in
one process; nothing of SGLang or Mooncake is replaced.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch

import mooncake_connector
from mooncake_connector import MooncakeConnector, MooncakeConnectorError
from mooncake_connector import sglang_plugin

pytestmark = pytest.mark.usefixtures("mooncake_cluster", "sglang_plugins", "sglang_world")

# A GPT-2 small enough to save and load in seconds; two layers so that
# per-layer names (fused qkv and all) are exercised more than once.
TINY_GPT2 = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "vocab_size": 512,
    "n_positions": 128,
    "n_ctx": 128,
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_inner": 256,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "torch_dtype": "bfloat16",
}
DTYPE = "bfloat16"


def _cpu():
    from sglang.srt.configs.device_config import DeviceConfig

    return DeviceConfig("cpu")


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.fixture
def model_name() -> str:
    return f"sglang-test/tiny-gpt2-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def dummy_model(tmp_path):
    """A local model folder (config.json only) and the model SGLang's dummy
    loader builds from it, with random weights."""
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader import get_model_loader

    folder = tmp_path / "tiny-gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_GPT2, indent=2))
    config = ModelConfig(model_path=str(folder), dtype=DTYPE)
    model = get_model_loader(LoadConfig(load_format="dummy"), config).load_model(
        model_config=config, device_config=_cpu())
    return folder, model


def test_plugin_is_applied():
    """load_plugins() ran our entry point, and the hook reached the module
    that defines the factory and the modules that imported it by name."""
    import sglang.srt.connector as connector_mod
    from sglang.srt.connector import BaseConnector, BaseKVConnector
    from sglang.srt.model_loader import loader as loader_mod

    factory = connector_mod.create_remote_connector
    assert getattr(factory, "__wrapped__", None) is not None, "the hook was not applied"
    assert loader_mod.create_remote_connector is factory
    assert issubclass(MooncakeConnector, BaseKVConnector)
    assert issubclass(MooncakeConnector, BaseConnector)
    assert issubclass(sglang_plugin.ParametersOf, BaseKVConnector)
    kv_load = loader_mod.RemoteModelLoader._load_model_from_remote_kv
    assert getattr(kv_load, "__wrapped__", None) is not None, "the in-place hook was not applied"
    # Registering again (a second load, a manual call) changes nothing.
    assert sglang_plugin.register() is True
    from sglang.srt.plugins.hook_registry import HookRegistry

    for target, hook in ((sglang_plugin.TARGET, sglang_plugin.route_create_remote_connector),
                         (sglang_plugin.KV_LOAD_TARGET, sglang_plugin.fill_parameters_in_place)):
        assert len([h for _, h, *_ in HookRegistry._hooks[target] if h is hook]) == 1, target


def test_mooncake_urls_reach_our_connector(model_name):
    from sglang.srt.connector import ConnectorType, create_remote_connector, get_connector_type

    with create_remote_connector(f"mooncake:///{model_name}", device="cpu") as client:
        assert type(client) is sglang_plugin.EngineConnector  # nothing stored: SGLang's KV path
        assert get_connector_type(client) == ConnectorType.KV
        assert client.model_name == model_name
    # The positional device SGLang's loaders pass, and device=None.
    with create_remote_connector(f"mooncake:///{model_name}", "cpu") as client:
        assert isinstance(client, MooncakeConnector)
    with create_remote_connector(f"mooncake:///{model_name}") as client:
        assert client.device == "cpu"


def test_checkpoint_models_take_sglangs_file_path(model_name):
    """A model stored under the checkpoint's names is a BaseFileConnector to
    SGLang (model.load_weights renames and shards it); its files and
    connector methods stay reachable."""
    from sglang.srt.connector import ConnectorType, create_remote_connector, get_connector_type

    with mooncake_connector.create_remote_connector(f"mooncake:///{model_name}") as c:
        c.save_state_dict({"model.norm.weight": torch.ones(8)}, layout="checkpoint")
        c.save_files({"config.json": b"{}"})
    with create_remote_connector(f"mooncake:///{model_name}", device="cpu") as client:
        assert type(client) is sglang_plugin.CheckpointModel
        assert get_connector_type(client) == ConnectorType.FS
        assert [n for n, _ in client.weight_iterator()] == ["model.norm.weight"]
        assert client.pull_files(allow_pattern=["*config.json"]) == ["config.json"]
        assert client.glob("*.json") == [f"{model_name}/files/config.json"]


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:1/some-model",   # SGLang's, nothing listening there
    "memory://some-model",              # ours outside SGLang, not routed into it
    "nosuchscheme://some-model",
])
def test_other_urls_reach_sglang(url):
    from sglang.srt.connector import create_remote_connector

    try:
        client = create_remote_connector(url)
    except MooncakeConnectorError as e:  # pragma: no cover - the failure this test is about
        pytest.fail(f"{url} reached mooncake_connector: {e!r}")
    except Exception as e:  # noqa: BLE001 - whatever SGLang's own code raises
        assert "mooncake_connector" not in type(e).__module__
        if not url.startswith("redis://"):
            assert "Invalid connector type" in str(e)  # SGLang's message for unknown schemes
    else:
        try:
            assert not isinstance(client, MooncakeConnector)
            assert type(client).__module__.startswith("sglang.")
        finally:
            client.close()


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "copied"])
def test_save_then_load_is_bit_exact(dummy_model, model_name, in_place, monkeypatch, caplog):
    """Both ways SGLang's KV path can get the weights: our hook fills the
    model's parameters in place (the default), or SGLang copies each tensor
    the iterator yields (MOONCAKE_CONNECTOR_IN_PLACE=0)."""
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader import get_model_loader
    from sglang.srt.model_loader.loader import RemoteModelLoader, ShardedStateLoader

    folder, model = dummy_model
    expected = _state_dict(model)
    assert expected and any(bool(_as_bits(t).any()) for t in expected.values())
    url = f"mooncake:///{model_name}"

    RemoteModelLoader.save_model(model, str(folder), url)

    with mooncake_connector.create_remote_connector(url) as c:
        stored = c.list(f"{model_name}/")
        assert f"{model_name}/files/config.json" in stored
        assert json.loads(c.getstr(f"{model_name}/files/config.json")) == TINY_GPT2
        # One key per tensor SGLang chose to save (shared storage saved once).
        saved = ShardedStateLoader._filter_subtensors(model.state_dict())
        assert sorted(k for k in stored if "/keys/" in k) == sorted(
            f"{model_name}/keys/rank_0/{k}" for k in saved)
        # Written by the plugin as one save of the rank: a manifest lists them.
        manifest = c.model_manifest(0)
        assert manifest["layout"] == "engine" and manifest["world_size"] == 1
        assert manifest["state"] == "complete" and manifest["tensors"] == len(saved)

    # The config comes back through our pull_files into our local directory.
    config = ModelConfig(model_path=url, dtype=DTYPE)
    assert config.model_weights == url
    pulled = json.loads((Path(config.model_path) / "config.json").read_text())
    assert pulled == TINY_GPT2
    assert config.hf_config.n_layer == TINY_GPT2["n_layer"]

    loader = get_model_loader(LoadConfig(load_format="remote"), config)
    assert isinstance(loader, RemoteModelLoader)
    monkeypatch.setenv("MOONCAKE_CONNECTOR_IN_PLACE", "1" if in_place else "0")
    with caplog.at_level("INFO", logger=sglang_plugin.__name__):
        loaded = loader.load_model(model_config=config, device_config=_cpu())
    actual = _state_dict(loaded)
    filled = [r.getMessage() for r in caplog.records if "in place" in r.getMessage()]
    assert filled == ([f"mooncake: filled {len(saved)} parameters of {model_name!r} in place"]
                      if in_place else [])

    assert actual.keys() == expected.keys()
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want), name
        assert torch.equal(_as_bits(got), _as_bits(want)), name  # also -0.0 vs 0.0


def test_parameters_that_differ_from_the_stored_tensors_are_copied_and_checked_by_sglang(
        dummy_model, model_name, caplog):
    """A stored engine model that is not exactly the engine's parameters is
    not filled in place: nothing is written, SGLang's own copy loop runs and
    raises its own error for what is missing."""
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader import get_model_loader
    from sglang.srt.model_loader.loader import ShardedStateLoader

    folder, model = dummy_model
    params = ShardedStateLoader._filter_subtensors(model.state_dict())
    left_out = sorted(params)[0]
    url = f"mooncake:///{model_name}"
    with mooncake_connector.create_remote_connector(url) as c:
        c.save_state_dict({k: v for k, v in params.items() if k != left_out})
        c.save_files({"config.json": (folder / "config.json").read_bytes()})
    config = ModelConfig(model_path=url, dtype=DTYPE)
    loader = get_model_loader(LoadConfig(load_format="remote"), config)
    with caplog.at_level("INFO", logger=sglang_plugin.__name__), \
            pytest.raises(ValueError, match="Missing keys") as raised:
        loader.load_model(model_config=config, device_config=_cpu())
    assert left_out in str(raised.value)
    assert any("by copying each tensor" in r.getMessage() and left_out in r.getMessage()
               for r in caplog.records)
