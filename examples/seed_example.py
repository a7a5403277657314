"""The seed document's Python example over ``mooncake://``.

By default it starts a local standalone Mooncake instance (a mooncake_master
and a storage process from the wheel, on loopback), exports its environment,
runs the seed's example against it (only the import differs from SGLang's
doc), stores a small generated model and reads it back printing throughput
(also on the embedded ``memory://`` store, for comparison), and stops the
instance. With ``--url`` it uses the store you name instead.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

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


def model_round_trip(url: str, layers: int, hidden: int) -> None:
    """Stores a generated bf16 model tensor by tensor and loads it back."""
    torch.manual_seed(0)
    model = {}
    for i in range(layers):
        model[f"layers.{i}.attn.qkv.weight"] = torch.randn(3 * hidden, hidden, dtype=torch.bfloat16)
        model[f"layers.{i}.mlp.up.weight"] = torch.randn(4 * hidden, hidden, dtype=torch.bfloat16)
        model[f"layers.{i}.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    total = sum(t.numel() * t.element_size() for t in model.values())
    with create_remote_connector(url) as c:
        for name in model:  # a fresh start: nothing left from an earlier run
            c.remove(f"demo-model/keys/rank_0/{name}")
        start = time.perf_counter()
        for name, t in model.items():
            c.set(f"demo-model/keys/rank_0/{name}", t)
        saved = time.perf_counter() - start
        start = time.perf_counter()
        loaded = {name: c.get(f"demo-model/keys/rank_0/{name}") for name in model}
        took = time.perf_counter() - start
        assert all(torch.equal(model[n], loaded[n]) for n in model)
        mib = total / 2**20
        print(f"{url:<12} model: {len(model)} tensors, {mib:.1f} MiB; "
              f"saved at {mib / saved:.0f} MiB/s, loaded at {mib / took:.0f} MiB/s, bit-exact")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=None,
                        help="use this store instead of starting a standalone Mooncake instance")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()
    if args.url:
        seed_example(args.url)
        model_round_trip(args.url, args.layers, args.hidden)
        return
    print("starting a standalone Mooncake instance (mooncake_master + storage process) ...")
    with standalone.start(segment_size="2gb") as inst:
        os.environ.update(inst.env())
        print(f"  master {inst.master_address}, metadata {inst.metadata_server}, "
              f"storage process {inst.client_address} (2gb), logs in {inst.log_dir}")
        seed_example("mooncake://")
        model_round_trip("mooncake://", args.layers, args.hidden)
        model_round_trip("memory://", args.layers, args.hidden)
    print("standalone instance stopped")


if __name__ == "__main__":
    main()
