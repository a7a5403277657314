"""Loading one checkpoint-layout model at tensor-parallel degree N (N
processes of one torch.distributed group), side by side in one run:

  cooperative     weight_iterator(group=...): each process fetches its share
                  of the bytes and the group exchanges the rest
  coop. whole     the same with whole tensors only (no tensor split between
                  the processes; what the plan did before splitting)
  share only      each process fetches just its share (load_into of the
                  cooperative plan) into its destinations, no exchange:
                  the cooperative row less the exchange
  every rank      weight_iterator() in every process at once: each fetches
                  the whole model (what SGLang's KV path and other tools do)
  disk            SGLang's disk loader's reader (safetensors safe_open,
                  tensor by tensor) over the same folder, from the page cache

Each sample is one new set of N processes; a row's time is the slowest
process's, from a barrier to the last tensor copied into a preallocated
destination, as an engine's load_weights copies it (on the GPU:
synchronized). Medians of --samples alternated samples, with min and max.
Bytes fetched per process come from load_stats. On a GPU host with N GPUs
(--device cuda) the exchange runs over NCCL; otherwise over gloo on the CPU.

  python bench/bench_tp.py [--size-mib 1024] [--world 2] [--samples 5] [--device cpu|cuda]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import write_result  # noqa: E402

ROWS = ["cooperative", "coop. whole", "share only", "every rank", "disk"]


def write_folder(folder: Path, size_mib: int, vocab: int = 32000, hidden: int = 2048) -> int:
    """A Llama checkpoint of about size_mib MiB in bf16 (at least one layer),
    two shards and a config.json that SGLang's loaders can build it from."""
    from safetensors.torch import save_file

    inter, heads = hidden * 11 // 4, max(1, hidden // 128)
    per_layer = (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * 2
    layers = max(1, (size_mib * 2**20 - 2 * vocab * hidden * 2) // per_layer)
    g = torch.Generator().manual_seed(0)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * 0.05).to(torch.bfloat16)

    sd = {"model.embed_tokens.weight": w(vocab, hidden), "lm_head.weight": w(vocab, hidden),
          "model.norm.weight": w(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[p + f"self_attn.{n}.weight"] = w(hidden, hidden)
        sd[p + "mlp.gate_proj.weight"] = w(inter, hidden)
        sd[p + "mlp.up_proj.weight"] = w(inter, hidden)
        sd[p + "mlp.down_proj.weight"] = w(hidden, inter)
        sd[p + "input_layernorm.weight"] = w(hidden)
        sd[p + "post_attention_layernorm.weight"] = w(hidden)
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(sd)
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        save_file({n: sd[n] for n in part}, str(folder / f"model-{k + 1:05d}-of-00002.safetensors"),
                  metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "torch_dtype": "bfloat16",
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}, indent=2))
    return sum(t.numel() * t.element_size() for t in sd.values())


def worker(args: argparse.Namespace) -> None:
    """One process of a sample: prints {"seconds", "fetched", "received"}."""
    import torch.distributed as dist

    from mooncake_connector import _group, _model, create_remote_connector

    rank, world = args.rank, args.world
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{args.port}",
                            rank=rank, world_size=world, timeout=timedelta(seconds=300))
    device = f"cuda:{rank}" if cuda else "cpu"
    out = {"fetched": 0, "received": 0}
    with create_remote_connector(args.url, device=device) as c:
        # Where an engine's load_weights would copy each tensor: preallocated,
        # pages touched, for every row alike.
        dest = {name: torch.zeros(shape, dtype=_model._NAME_TO_TORCH[dtype], device=device)
                for name, dtype, shape, _, _ in c._model().reader(0, True, 1 << 30, None).tensors()}
        dist.barrier()
        start = time.perf_counter()
        if args.row == "coop. whole":  # the same, no tensor split between processes
            _group._MIN_PIECE_BYTES = 1 << 62  # noqa: SLF001 - a bench-only switch
        if args.row in ("cooperative", "coop. whole"):
            for name, t in c.weight_iterator(group=dist.group.WORLD):
                dest[name].copy_(t)
            out.update(fetched=c.load_stats["fetched_bytes"], received=c.load_stats["received_bytes"],
                       exchange=c.load_stats["exchange"],
                       phases={k: v for k, v in c.load_stats.items() if k.endswith("_s")},
                       split=c.load_stats["split_tensors"])
        elif args.row == "every rank":
            for name, t in c.weight_iterator():
                dest[name].copy_(t)
                out["fetched"] += t.numel() * t.element_size()
        elif args.row == "share only":
            model = c._model()  # noqa: SLF001 - the cooperative plan, without its exchange
            reader = model.reader(0, True, _model.DEFAULT_BATCH_BYTES, None)
            entries = reader.tensors()
            for _, pieces in reader.plan_shares(world, _model.DEFAULT_BATCH_BYTES):
                mine = [p for p in pieces if p[3] == rank]
                whole = {entries[i][0]: dest[entries[i][0]] for i, _, _, _, w in mine if w}
                if whole:
                    _model.load_into(model, 0, whole, strict=False)
                split = [(i, offset, dest[entries[i][0]].view(-1).view(torch.uint8)[offset:offset + size])
                         for i, offset, size, _, w in mine if not w]
                if split:
                    reader.read_pieces([i for i, _, _ in split], [o for _, o, _ in split],
                                       [v.data_ptr() for _, _, v in split], [v.numel() for _, _, v in split])
                out["fetched"] += sum(p[2] for p in mine)
        else:  # disk: what SGLang's safetensors_weights_iterator does per tensor, then the copy
            from safetensors import safe_open

            for shard in sorted(Path(args.folder).glob("*.safetensors")):
                with safe_open(str(shard), framework="pt", device="cpu") as f:
                    for name in f.keys():
                        dest[name].copy_(f.get_tensor(name), non_blocking=cuda)
        if cuda:
            torch.cuda.synchronize()
        out["seconds"] = time.perf_counter() - start
    print(json.dumps(out), flush=True)
    os._exit(0)


def sample(args: argparse.Namespace, row: str, url: str, folder: Path) -> dict:
    from mooncake_connector import standalone

    port = standalone.free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--row", row, "--url", url, "--folder",
                               str(folder), "--rank", str(r), "--world", str(args.world), "--port", str(port),
                               "--device", args.device], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for r in range(args.world)]
    outs = []
    for p in procs:
        text, _ = p.communicate(timeout=900)
        outs.append(json.loads(text.strip().splitlines()[-1]))
    return {"seconds": max(o["seconds"] for o in outs), "fetched": [o["fetched"] for o in outs],
            "received": [o["received"] for o in outs], "exchange": outs[0].get("exchange"),
            "phases": outs[0].get("phases"), "split": outs[0].get("split")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--vocab", type=int, default=32000,
                        help="embedding rows (128256, Llama 3's, makes embed_tokens and lm_head larger than a "
                             "batch's share, so they are split between the processes)")
    parser.add_argument("--out", default="bench/results/bench_tp.json")
    for hidden in ("--worker", "--row", "--url", "--folder", "--rank", "--port"):
        parser.add_argument(hidden, help=argparse.SUPPRESS, **({"action": "store_true"} if hidden == "--worker"
                                                               else {"type": int} if hidden in ("--rank", "--port")
                                                               else {}))
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from mooncake_connector import create_remote_connector, standalone

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        total = write_folder(folder, args.size_mib, args.vocab)
        segment_mib = max(2048, 3 * (total >> 20))
        with standalone.start(segment_size=f"{segment_mib}mb", local_buffer_size="64mb",
                              lease_ttl_ms=None) as inst:
            os.environ.update(inst.env())
            url = "mooncake:///bench/tp"
            with create_remote_connector(url) as c:
                c.save_directory(folder)
            for shard in folder.glob("*.safetensors"):  # the disk row reads from the page cache
                shard.read_bytes()
            times: dict[str, list[float]] = {r: [] for r in ROWS}
            fetched: dict[str, list[int]] = {}
            received: dict[str, list[int]] = {}
            phases: list[dict] = []
            exchange, split = "?", 0
            for _ in range(args.samples):
                for row in ROWS:  # alternated, so drift hits every row alike
                    s = sample(args, row, url, folder)
                    times[row].append(s["seconds"])
                    fetched[row], received[row] = s["fetched"], s["received"]
                    if row == "cooperative":
                        phases.append(s["phases"])
                        exchange, split = s["exchange"], s["split"]
    every = statistics.median(times["every rank"])
    share = statistics.median(times["share only"])
    rows = []
    print(f"TP {args.world}, {total / 2**30:.2f} GiB checkpoint, {args.device}, exchange by {exchange} "
          f"({'NCCL' if args.device == 'cuda' else 'gloo'} group); medians of {args.samples} samples (min-max)")
    print(f"{'row':<12} {'median s':>9} {'min':>7} {'max':>7} {'vs every rank':>13} {'vs share':>8}  "
          f"fetched per process (MiB)")
    for row in ROWS:
        med = statistics.median(times[row])
        rows.append({"row": row, "median_s": med, "min_s": min(times[row]), "max_s": max(times[row]),
                     "samples_s": times[row], "fetched_bytes": fetched[row], "received_bytes": received[row],
                     "vs_every_rank": med / every, "vs_share_only": med / share})
        print(f"{row:<12} {med:>9.3f} {min(times[row]):>7.3f} {max(times[row]):>7.3f} {med / every:>12.2f}x "
              f"{med / share:>7.2f}x  {[round(b / 2**20) for b in fetched[row]]}")
    phase_medians = {k: statistics.median(p[k] for p in phases) for k in phases[0]} if phases else {}
    print("cooperative, process 0, median seconds: " +
          ", ".join(f"{k[:-2]} {v:.3f}" for k, v in phase_medians.items()) +
          f" (create and fetch on a helper thread, the rest on the caller's: caller is its own copying);"
          f" tensors split between processes: {split}")
    coop = statistics.median(times["cooperative"])
    targets = {"cooperative <= 0.6x every rank": coop / every <= 0.6,
               "exchange adds <= 10% to one share": coop / share <= 1.10}
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'missed'}")
    command = f"python bench/bench_tp.py --size-mib {args.size_mib} --world {args.world} " \
              f"--samples {args.samples} --device {args.device} --vocab {args.vocab}"
    write_result(args.out, "bench_tp", command, world=args.world, total_bytes=total, device=args.device,
                 exchange=exchange, split_tensors=split, cooperative_phases_s=phase_medians, rows=rows,
                 targets=targets)


if __name__ == "__main__":
    main()
