"""Loads onto a GPU, side by side in one run (issue 8, item 4): needs a CUDA
device (run on the lent H200 machine; CI has none). For each store --
memory://, and mooncake:// over TCP and in standalone-client mode when the
Mooncake wheel is installed, and memory:// with pinned values (?pinned=1,
copied to the GPU straight from the store) -- the same Llama-like bf16 weights (8B-like
tensor shapes, fewer layers) are loaded with:

  h2d pinned          one copy of all the bytes from pinned host memory (the
                      link's ceiling, the target's reference);
  h2d pageable        the same from ordinary memory;
  fetch to host       our load_into into reused CPU tensors (the fetch alone);
  load_into cuda      our load_into into preallocated GPU tensors (pipeline),
                      and the same without checking checksums; "first load":
                      on a new connector, which hashes every value (one that
                      loaded a memory:// value before does not hash it again
                      while it is the same stored value);
  load_state_dict     our load_state_dict(device="cuda");
  weight_iterator     our weight_iterator on a device="cuda" connector;
  simple path         load_state_dict on the CPU, then .to("cuda") each.

Targets: from memory://, load_into cuda >= 0.8x the pinned copy's bandwidth
(first loads and repeated ones);
from mooncake://, load_into cuda's time <= 1.1x max(fetch, pinned copy).
Prints the table and the targets, writes bench/results/gpu_bench.json.

    python bench/gpu_bench.py [--layers 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import llama_like, memcpy, nbytes  # noqa: E402
from harness import environ, write_result  # noqa: E402
from mooncake_connector import create_remote_connector, standalone  # noqa: E402

GB = 1e9


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Best of `repeat`, the GPU drained before and after each run."""
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def store_rows(url: str, sd: dict[str, torch.Tensor], repeat: int) -> dict[str, float]:
    size = nbytes(sd)
    host_dest = {n: torch.empty_like(t) for n, t in sd.items()}
    gpu_dest = {n: torch.empty_like(t, device="cuda") for n, t in sd.items()}
    out = {}
    with create_remote_connector(url, device="cuda") as c:
        c.save_state_dict(sd)

        def iterate():
            for _ in c.weight_iterator():
                pass

        def simple():
            return {n: t.to("cuda") for n, t in c.load_state_dict(device="cpu").items()}

        # A connector loading values for the first time hashes each; one that
        # checked a memory:// value before does not hash it again.
        # (memory:// only: mooncake:// values are hashed on every load.)
        memory = url.startswith("memory://")
        fresh = [create_remote_connector(url, device="cuda") for _ in range(repeat if memory else 0)]

        def first_load():
            with fresh.pop() as f:
                f.load_into(gpu_dest)

        for row, fn in (("fetch to host", lambda: c.load_into(host_dest)),
                        *((("load_into cuda, first load", first_load),) if memory else ()),
                        ("load_into cuda", lambda: c.load_into(gpu_dest)),
                        ("load_into cuda, verify=False", lambda: c.load_into(gpu_dest, verify=False)),
                        ("load_into cuda, 1 GiB batches", lambda: c.load_into(gpu_dest, batch_bytes=1 << 30)),
                        ("load_state_dict cuda", lambda: c.load_state_dict(device="cuda")),
                        ("weight_iterator cuda", iterate),
                        ("simple path (cpu, then .to)", simple)):
            out[row] = timed(fn, repeat)
            print(f"  {url:<40} {row:<30} {size / out[row] / GB:7.2f} GB/s", flush=True)
        for n, t in sd.items():
            assert torch.equal(gpu_dest[n].view(torch.uint8).cpu(), t.view(torch.uint8)), n
        c.remove_model()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/results/gpu_bench.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA device visible to torch")
    sd = llama_like(args.layers, 4096, 32000)
    size = nbytes(sd)
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {os.cpu_count()} cores; "
          f"model {len(sd)} tensors, {size / GB:.2f} GB", flush=True)

    host = torch.cat([t.reshape(-1).view(torch.uint8) for t in sd.values()])
    pinned = host.pin_memory()
    dev = torch.empty(size, dtype=torch.uint8, device="cuda")
    rows: dict[str, dict[str, float]] = {"copy": {
        "h2d pinned": timed(lambda: dev.copy_(pinned, non_blocking=True), args.repeat),
        "h2d pageable": timed(lambda: dev.copy_(host), args.repeat),
    }}
    # The host's copy ceiling: the bytes copied into reused pinned memory.
    parts = [t.reshape(-1).view(torch.uint8) for t in sd.values()]
    for threads in (1, 8):
        rows["copy"][f"memcpy to pinned, {threads} threads"] = timed(lambda: memcpy(pinned, parts, threads),
                                                                       args.repeat)
    del dev, pinned, host, parts
    for row, secs in rows["copy"].items():
        print(f"  {'(torch)':<40} {row:<30} {size / secs / GB:7.2f} GB/s", flush=True)

    rows["memory://"] = store_rows("memory://gpu-bench/model", sd, args.repeat)
    rows["memory:// pinned"] = store_rows("memory://gpu-bench-pinned/model?pinned=1", sd, args.repeat)
    try:
        standalone.find_binary("mooncake_master")
        have_mooncake = True
    except standalone.StandaloneError as e:
        have_mooncake = False
        print(f"  mooncake:// rows skipped: {e}")
    if have_mooncake:
        for mode in ("tcp", "client"):
            with standalone.start(segment_size=f"{(3 * size >> 20) + 1024}mb", local_buffer_size="512mb",
                                  lease_ttl_ms=None) as inst:
                env = inst.env()
                env["MOONCAKE_LOCAL_BUFFER_SIZE"] = "512mb"
                if mode == "client":
                    env["MOONCAKE_CLIENT"] = inst.client_address
                with environ(env):
                    rows[f"mooncake:// {mode}"] = store_rows(f"mooncake:///gpu-bench/{mode}", sd, args.repeat)

    copy = rows["copy"]["h2d pinned"]
    print(f"\n{'store':<20} {'row':<30} {'GB/s':>7} {'x pinned':>9}")
    for store, r in rows.items():
        for row, secs in r.items():
            print(f"{store:<20} {row:<30} {size / secs / GB:7.2f} {copy / secs:9.2f}")
    targets = []
    for store in ("memory://", "memory:// pinned"):
        for row in ("load_into cuda, first load", "load_into cuda"):
            mem = rows[store][row]
            targets.append({"target": f"{store} {row} >= 0.8x pinned h2d bandwidth", "ratio": copy / mem,
                            "met": copy / mem >= 0.8})
    for store, r in rows.items():
        if store.startswith("mooncake"):
            bound = max(r["fetch to host"], copy)
            targets.append({"target": f"{store} load_into cuda time <= 1.1x max(fetch, pinned h2d)",
                            "ratio": r["load_into cuda"] / bound, "met": r["load_into cuda"] / bound <= 1.1})
    print()
    for t in targets:
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['ratio']:5.2f}  {t['target']}")
    write_result(args.out, "gpu_bench", "python bench/gpu_bench.py " + " ".join(sys.argv[1:]),
                 device=torch.cuda.get_device_name(0), torch=torch.__version__, bytes=size,
                 seconds=rows, targets=targets)


if __name__ == "__main__":
    main()
