"""Tiny Hugging Face model folders for SGLang's loaders, written directly
with safetensors under the checkpoints' own tensor names (what
``save_pretrained`` writes), with random bf16 weights: a Llama (separate
q/k/v and gate/up, which SGLang fuses and shards), a Llama with tied
embeddings (no ``lm_head.weight`` in the checkpoint), and a Mixtral (MoE:
experts SGLang shards)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 128, 2, 4, 2, 512
EXPERTS = 4

_BASE = {
    "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
    "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}
CONFIGS = {
    "llama": {**_BASE, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "tie_word_embeddings": False},
    "llama-tied": {**_BASE, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "tie_word_embeddings": True},
    "mixtral": {**_BASE, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "tie_word_embeddings": False, "num_local_experts": EXPERTS, "num_experts_per_tok": 2},
}


def _tensors(kind: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.05).to(torch.bfloat16)

    head = HIDDEN // HEADS
    sd = {"model.embed_tokens.weight": w(VOCAB, HIDDEN), "model.norm.weight": w(HIDDEN)}
    if not CONFIGS[kind]["tie_word_embeddings"]:
        sd["lm_head.weight"] = w(VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = w(HIDDEN)
        sd[p + "post_attention_layernorm.weight"] = w(HIDDEN)
        sd[p + "self_attn.q_proj.weight"] = w(HEADS * head, HIDDEN)
        sd[p + "self_attn.k_proj.weight"] = w(KV_HEADS * head, HIDDEN)
        sd[p + "self_attn.v_proj.weight"] = w(KV_HEADS * head, HIDDEN)
        sd[p + "self_attn.o_proj.weight"] = w(HIDDEN, HEADS * head)
        if kind == "mixtral":
            sd[p + "block_sparse_moe.gate.weight"] = w(EXPERTS, HIDDEN)
            for e in range(EXPERTS):
                q = f"{p}block_sparse_moe.experts.{e}."
                sd[q + "w1.weight"] = w(INTER, HIDDEN)
                sd[q + "w2.weight"] = w(HIDDEN, INTER)
                sd[q + "w3.weight"] = w(INTER, HIDDEN)
        else:
            sd[p + "mlp.gate_proj.weight"] = w(INTER, HIDDEN)
            sd[p + "mlp.up_proj.weight"] = w(INTER, HIDDEN)
            sd[p + "mlp.down_proj.weight"] = w(HIDDEN, INTER)
    return sd


def write_model(folder: Path, kind: str, seed: int = 0) -> Path:
    """A folder as save_pretrained leaves it: two shards and their index,
    config.json, generation_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = _tensors(kind, seed)
    names = sorted(sd)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: sd[n] for n in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(CONFIGS[kind], indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return folder
