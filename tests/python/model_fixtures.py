"""Generated models for the model tests: a state dict of many dtypes, a
Hugging Face style directory (sharded, with an index, nested files), and the
real model silero-vad ships."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from conftest import random_tensor

# Small tensors of every kind plus a few above the 64 KiB chunk size the
# mooncake tests use (and one far above it).
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.float8_e4m3fn,
          torch.float8_e5m2, torch.int8, torch.uint8, torch.int32, torch.int64, torch.bool]


def generated_state_dict(seed: int = 0, small: int = 120) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for i in range(small):
        dtype = DTYPES[i % len(DTYPES)]
        shape = [(1, 7), (3, 5, 2), (64,), (), (0, 4)][i % 5]
        sd[f"layers.{i // 10}.small_{i}.weight"] = random_tensor(dtype, shape, seed=seed * 1000 + i)
    sd["embed_tokens.weight"] = random_tensor(torch.bfloat16, (1000, 384), seed=seed + 7)  # 750 KiB
    sd["layers.0.mlp.up_proj.weight"] = random_tensor(torch.float8_e4m3fn, (512, 300), seed=seed + 8)
    sd["lm_head.weight"] = random_tensor(torch.float32, (2, 70000), seed=seed + 9)  # 547 KiB
    sd["norm.weight"] = random_tensor(torch.float32, (384,), seed=seed + 10)
    return sd


def write_hf_directory(root: Path, sd: dict[str, torch.Tensor], shards: int = 3) -> Path:
    """A Hugging Face style model folder: shards + index, configs, a binary
    tokenizer.model, a chat template, a nested folder, and things a save
    must skip (a hidden folder, a .bin)."""
    root.mkdir(parents=True, exist_ok=True)
    names = sorted(sd)
    weight_map = {}
    for s in range(shards):
        part = {n: sd[n].contiguous() for n in names[s::shards]}
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(root / fname))
        weight_map.update({n: fname for n in part})
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 384}))
    (root / "generation_config.json").write_text("{}")
    (root / "tokenizer.model").write_bytes(bytes(range(256)) * 40 + b"\x00\xff")
    (root / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}\n")
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    (root / ".cache").mkdir(exist_ok=True)
    (root / ".cache" / "junk").write_text("skip me")
    (root / "pytorch_model.bin").write_bytes(b"old weights format")
    return root


EXPECTED_FILES = {"model.safetensors.index.json", "config.json", "generation_config.json",
                  "tokenizer.model", "chat_template.jinja", "tokenizer/vocab.txt"}


def silero_vad_safetensors() -> Path:
    """The trained Silero VAD weights silero-vad's wheel ships (MIT)."""
    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None and spec.submodule_search_locations, "silero-vad is not installed"
    path = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad_16k.safetensors"
    assert path.is_file(), path
    return path


def model_url(store_url: str, name: str, chunked: bool = False) -> str:
    """The URL of model `name` in the store; on mooncake:// with a 64 KiB
    chunk size when `chunked` (so that large tensors span many chunks)."""
    url = f"{store_url}/{name}"
    if chunked and store_url.startswith("mooncake"):
        url += "?chunk_size=64kb"
    return url


def env_of_store() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("MOONCAKE")}
