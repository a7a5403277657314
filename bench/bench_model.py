"""Model load and save over mooncake:// against the raw wheel, side by side
in one run, on the same standalone instance and the same bytes.

A generated Llama-like bf16 state dict (``--layers`` layers of width
``--hidden``: q/k/v/o, gate/up/down, norms, plus an embedding) is saved with
``save_state_dict`` and, as raw bytes, with the wheel's ``batch_put_from``
from one registered buffer. Then (best of ``--repeat``):

- raw_batch_get_into: the wheel's one batch call into the registered buffer
  (Mooncake's own ceiling through its Python API);
- ours: ``weight_iterator``, ``load_state_dict`` (verified and not), and
  ``load_into`` preallocated tensors;
- save: ``save_state_dict`` (a fresh model name each time) against raw
  ``batch_put_from``.

Prints a table with ratios to raw and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import os

import torch

from harness import best, raw_wheel_client, write_result
from mooncake_connector import create_remote_connector, standalone


def llama_like(layers: int, hidden: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    inter = hidden * 8 // 3
    sd = {"model.embed_tokens.weight": torch.randn(8192, hidden, dtype=torch.bfloat16)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj in ("q", "k", "v", "o"):
            sd[f"{p}.self_attn.{proj}_proj.weight"] = torch.randn(hidden, hidden, dtype=torch.bfloat16)
        sd[f"{p}.mlp.gate_proj.weight"] = torch.randn(inter, hidden, dtype=torch.bfloat16)
        sd[f"{p}.mlp.up_proj.weight"] = torch.randn(inter, hidden, dtype=torch.bfloat16)
        sd[f"{p}.mlp.down_proj.weight"] = torch.randn(hidden, inter, dtype=torch.bfloat16)
        sd[f"{p}.input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        sd[f"{p}.post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    sd["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    return sd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/results/model.json")
    args = parser.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "3")

    sd = llama_like(args.layers, args.hidden)
    sizes = [t.numel() * t.element_size() for t in sd.values()]
    total = sum(sizes)
    gib = total / 2**30
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    with standalone.start(segment_size=f"{max(1024, 8 * total >> 20)}mb") as inst:
        os.environ.update(inst.env())
        raw, buf = raw_wheel_client(inst, total)
        for off, t in zip(offsets, sd.values()):
            buf[off:off + t.numel() * t.element_size()] = t.reshape(-1).view(torch.uint8).numpy()
        ptrs = [buf.ctypes.data + off for off in offsets]
        round_no = [0]

        def save_raw():
            round_no[0] += 1
            keys = [f"raw{round_no[0]}/{n}" for n in sd]
            assert all(r == 0 for r in raw.batch_put_from(keys, ptrs, sizes))

        save_raw()
        keys = [f"raw1/{n}" for n in sd]

        def load_raw():
            assert list(raw.batch_get_into(keys, ptrs, sizes)) == sizes

        with create_remote_connector("mooncake:///bench/model") as c:
            def save_ours():
                with create_remote_connector(f"mooncake:///bench/save{round_no[0]}") as s:
                    round_no[0] += 1
                    s.save_state_dict(sd)

            c.save_state_dict(sd)
            dest = {n: torch.empty_like(t) for n, t in sd.items()}
            rows = {
                "raw_batch_get_into": best(load_raw, args.repeat),
                "weight_iterator": best(lambda: [t for _, t in c.weight_iterator()], args.repeat),
                "load_state_dict": best(c.load_state_dict, args.repeat),
                "load_state_dict_no_verify": best(lambda: c.load_state_dict(verify=False), args.repeat),
                "load_into_preallocated": best(lambda: c.load_into(dest), args.repeat),
                "raw_batch_put_from": best(save_raw, args.repeat),
                "save_state_dict": best(save_ours, args.repeat),
            }
            assert all(torch.equal(dest[n], t) for n, t in sd.items())
        raw.close()

    print(f"{len(sd)} bf16 tensors ({args.layers} layers, hidden {args.hidden}) = {gib:.3f} GiB, "
          f"best of {args.repeat}")
    print(f"{'path':<28} {'GiB/s':>8} {'vs raw':>8}")
    out = []
    for name, secs in rows.items():
        base = rows["raw_batch_put_from" if "save" in name or "put" in name else "raw_batch_get_into"]
        print(f"{name:<28} {gib / secs:>8.2f} {base / secs:>8.2f}")
        out.append({"path": name, "seconds": secs, "gib_s": gib / secs, "vs_raw": base / secs})
    write_result(args.out, "model_load_save_vs_raw_wheel",
                 f"python bench/bench_model.py --layers {args.layers} --hidden {args.hidden}",
                 total_gib=gib, tensors=len(sd), rows=out)


if __name__ == "__main__":
    main()
