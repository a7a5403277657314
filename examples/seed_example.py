"""The seed document's Python example over ``mooncake://``.

By default it starts a local standalone Mooncake instance (a mooncake_master
and a storage process from the wheel, on loopback), exports its environment,
runs the seed's example against it (only the import differs from SGLang's
doc), saves a generated Hugging Face style model into it with the
``mooncake-connector`` CLI and loads it back printing throughput, lists and
verifies it, stops the instance, and loads the same model from the embedded
``memory://`` store for comparison. With ``--url`` it uses the store you name
instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from mooncake_connector import create_remote_connector, standalone


def seed_example(url: str) -> None:
    # --- the seed's example ------------------------------------------------
    # (SGLang's doc: create_remote_connector("mooncake://", device="cpu"))
    connector = create_remote_connector(url, device="cpu")

    key = "my_model_weight"
    tensor = torch.randn(1024, 1024)
    connector.set(key, tensor)

    retrieved_tensor = connector.get(key)
    assert torch.allclose(tensor, retrieved_tensor)

    connector.setstr("config_json", '{"hidden_size": 1024}')
    config = connector.getstr("config_json")
    # --- end of the seed's example -------------------------------------------

    assert config == '{"hidden_size": 1024}'
    print(f"connector: {connector!r}")
    print(f"set {key!r}: {tuple(tensor.shape)} {tensor.dtype}, "
          f"got back {tuple(retrieved_tensor.shape)} {retrieved_tensor.dtype}, "
          f"bit-exact: {torch.equal(tensor, retrieved_tensor)}")
    print(f"setstr 'config_json', getstr -> {config!r}")
    print(f"list('') -> {connector.list('')}")
    connector.close()


def generated_model_dir(root: Path, layers: int, hidden: int) -> Path:
    """A Hugging Face style folder of a generated Llama-like bf16 model:
    two safetensors shards with an index, a config and a tokenizer file."""
    torch.manual_seed(0)
    model = {"model.embed_tokens.weight": torch.randn(4096, hidden, dtype=torch.bfloat16)}
    for i in range(layers):
        p = f"model.layers.{i}"
        model[f"{p}.self_attn.qkv_proj.weight"] = torch.randn(3 * hidden, hidden, dtype=torch.bfloat16)
        model[f"{p}.self_attn.o_proj.weight"] = torch.randn(hidden, hidden, dtype=torch.bfloat16)
        model[f"{p}.mlp.gate_up_proj.weight"] = torch.randn(4 * hidden, hidden, dtype=torch.bfloat16)
        model[f"{p}.mlp.down_proj.weight"] = torch.randn(hidden, 2 * hidden, dtype=torch.bfloat16)
        model[f"{p}.input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    names = sorted(model)
    weight_map = {}
    for s, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        fname = f"model-{s + 1:05d}-of-00002.safetensors"
        save_file({n: model[n] for n in part}, str(root / fname))
        weight_map.update({n: fname for n in part})
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden,
                                                  "num_hidden_layers": layers}))
    (root / "tokenizer.model").write_bytes(bytes(range(256)) * 64)
    return root


def model_via_cli(url: str, layers: int, hidden: int) -> None:
    """Saves a generated model with the CLI and loads it back with the CLI
    (printing bytes, seconds and GB/s), then lists and verifies it."""
    with tempfile.TemporaryDirectory() as tmp:
        root = generated_model_dir(Path(tmp), layers, hidden)
        for args in (["save", str(root), url], ["load", url], ["ls"], ["verify", url]):
            print(f"$ mooncake-connector {' '.join(args[:1] + [a if a != str(root) else 'DIR' for a in args[1:]])}",
                  flush=True)
            subprocess.run([sys.executable, "-m", "mooncake_connector.cli", *args, "--quiet"], check=True)


def model_in_memory(layers: int, hidden: int) -> None:
    """The same model through the Python API on the embedded memory:// store."""
    with tempfile.TemporaryDirectory() as tmp:
        root = generated_model_dir(Path(tmp), layers, hidden)
        with create_remote_connector("memory://demo/model") as c:
            c.save_directory(root)
            start = time.perf_counter()
            tensors = c.load_state_dict()
            took = time.perf_counter() - start
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        print(f"memory://   loaded {len(tensors)} tensors, {nbytes / 2**20:.2f} MiB in {took:.3f} s "
              f"({nbytes / took / 1e9:.2f} GB/s), checksums verified")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=None,
                        help="use this store instead of starting a standalone Mooncake instance")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()
    if args.url:
        seed_example(args.url)
        model_via_cli(args.url.rstrip("/") + "/demo/model", args.layers, args.hidden)
        return
    print("starting a standalone Mooncake instance (mooncake_master + storage process) ...")
    with standalone.start(segment_size="2gb") as inst:
        os.environ.update(inst.env())
        print(f"  master {inst.master_address}, metadata {inst.metadata_server}, "
              f"storage process {inst.client_address} (2gb), logs in {inst.log_dir}")
        seed_example("mooncake://")
        model_via_cli("mooncake:///demo/model", args.layers, args.hidden)
    print("standalone instance stopped")
    model_in_memory(args.layers, args.hidden)


if __name__ == "__main__":
    main()
