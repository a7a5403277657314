"""Tiny Hugging Face model folders for SGLang's loaders, written directly
with safetensors under the checkpoints' own tensor names (what
``save_pretrained`` writes), with random bf16 weights: a Llama (separate
q/k/v and gate/up, which SGLang fuses and shards), a Llama with tied
embeddings (no ``lm_head.weight`` in the checkpoint), a Mixtral (MoE:
experts SGLang shards), and a Llama whose linear layers are block-quantized
fp8 (``float8_e4m3fn`` weights with a float32 ``weight_scale_inv`` per
16x16 block, DeepSeek-V3's format), which SGLang's CPU path loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 128, 2, 4, 2, 512
EXPERTS = 4
FP8_BLOCK = 16

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
    "llama-fp8": {**_BASE, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  "tie_word_embeddings": False,
                  "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                          "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}},
}


def _tensors(kind: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.05).to(torch.bfloat16)

    def linear(*shape: int) -> dict[str, torch.Tensor]:
        if kind != "llama-fp8":
            return {"weight": w(*shape)}
        blocks = [-(-n // FP8_BLOCK) for n in shape]
        return {"weight": w(*shape).to(torch.float32).to(torch.float8_e4m3fn),
                "weight_scale_inv": torch.rand(*blocks, generator=g) + 0.5}

    head = HIDDEN // HEADS
    sd = {"model.embed_tokens.weight": w(VOCAB, HIDDEN), "model.norm.weight": w(HIDDEN)}
    if not CONFIGS[kind]["tie_word_embeddings"]:
        sd["lm_head.weight"] = w(VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = w(HIDDEN)
        sd[p + "post_attention_layernorm.weight"] = w(HIDDEN)
        shapes = {"self_attn.q_proj": (HEADS * head, HIDDEN), "self_attn.k_proj": (KV_HEADS * head, HIDDEN),
                  "self_attn.v_proj": (KV_HEADS * head, HIDDEN), "self_attn.o_proj": (HIDDEN, HEADS * head)}
        if kind == "mixtral":
            sd[p + "block_sparse_moe.gate.weight"] = w(EXPERTS, HIDDEN)
            for e in range(EXPERTS):
                q = f"{p}block_sparse_moe.experts.{e}."
                sd[q + "w1.weight"] = w(INTER, HIDDEN)
                sd[q + "w2.weight"] = w(HIDDEN, INTER)
                sd[q + "w3.weight"] = w(INTER, HIDDEN)
        else:
            shapes.update({"mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN),
                           "mlp.down_proj": (HIDDEN, INTER)})
        for module, shape in shapes.items():
            for suffix, t in linear(*shape).items():
                sd[f"{p}{module}.{suffix}"] = t
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
