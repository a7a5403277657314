"""Cold start (`make bench` runs it first): what an engine feels, the first
load of a new process. Every sample is a new Python process; the rows of a
mode are alternated round by round; medians (with min and max) of
--samples samples, not best-of.

Rows, in each deployment mode:
  raw load                the raw wheel: its client set up, a fresh buffer of
                          the model's size (allocated, never touched, then
                          registered), one batch_get_into;
  raw load + copy         the same, then each tensor copied into a fresh
                          parameter: what an engine does with what it gets;
  ours load_into          fresh tensors (torch.empty, never touched), load_into;
  ours load_state_dict    a new state dict;
  ours weight_iterator    as SGLang's KV path drives it: each tensor copied
                          into a fresh parameter (`param.data.copy_(tensor)`);
  raw save                the raw wheel storing an engine's state dict (the
                          model read from a safetensors file into the new
                          process first, untimed): each tensor's memory
                          registered, one batch_put_from; in standalone-client
                          mode, which puts only from its shared memory, the
                          tensors copied into it first (the equivalent work);
  raw save + hash         the same, with the work a save a user can trust
                          adds: while the put runs, every tensor is hashed
                          (XXH3 in 16 MiB pieces, Debian's libxxhash) on as
                          many threads as ours hashes on (half the copy
                          threads); the equivalent of ours, for reference;
  ours save_state_dict    the same tensors, save_state_dict (checksums,
                          manifest, hard pin, as a user saves).
A save sample reads what it stored back after its clock stops and checks it;
the store is swept before the next sample, so every save writes into memory
the store has used before.
Three times per sample: `total` from just before the process is spawned to
the weights in place (interpreter, imports, client setup, load); `setup +
load` from after the imports (both sides' client setup, and the page faults
of their destinations: standalone-client mode's raw wheel maps its shared
memory populated during its setup); `load` alone (after the setup and the
destination's allocation; `destinations_s` in the JSON is the part of the
setup that allocated fresh destinations in the rows that have them: `raw
load + copy`, `ours load_into`, `ours weight_iterator`; on a GPU it also
zeroed them, and there it is left out of `total` and `setup + load`: an
engine's parameters exist before its loader runs, and the zeros are this
bench's check). After the clock stops each child checks the bytes
it loaded against the model's (a sum of every 16-bit word per tensor), so a
load that wrote nothing cannot pass. Where the CPU went during `load`: the
machine's busy share (all its cores, from /proc/stat) and the sample
process's own user and system seconds, in the JSON and a second table.

With --device cuda the weights go to the GPU: fresh parameters there (set to
zeros before the clock starts), the CUDA context made during the setup on
both sides, each clock stopped after a synchronize; `raw load` is then the
raw wheel's fetch alone, into host memory (the target: a first load onto the
GPU within 1.05x of it; the GPU parameters' allocation and reset are left
out of the other rows' clocks, as above), and `raw load + copy` adds the
copies to the GPU.
The save rows then start from the weights on the GPU (the process's peak
memory counted from there): the raw wheel puts from host memory only, so
`raw save` copies the rank into one host buffer first (the equivalent work);
ours copies a batch at a time through two pinned buffers.

Modes: tcp (a storage process holds the model, the reader is a pure client);
own (the same, and the reader contributes a segment of its own, as an engine
configured with MOONCAKE_GLOBAL_SEGMENT_SIZE does: its setup registers it);
client (standalone-client mode: the reader is a dummy client of the storage
process, over shared memory).

Targets (issue 23), ratios of medians of `setup + load` in one run:
weight_iterator and load_state_dict >= 0.95x raw load + copy and raw load
respectively, load_into >= 0.95x raw load, save_state_dict >= 0.9x raw save.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import add_load_args, environ, parse_modes, write_result

GiB = 2**30
ROWS = ["raw load", "raw load + copy", "ours load_into", "ours load_state_dict", "ours weight_iterator", "raw save",
        "raw save + hash", "ours save_state_dict"]
SAVE_ROWS = ("raw save", "raw save + hash", "ours save_state_dict")
# (ours row, raw row it is compared with, goal)
TARGETS = [("ours weight_iterator", "raw load + copy", 0.95), ("ours load_state_dict", "raw load", 0.95),
           ("ours load_into", "raw load", 0.95), ("ours save_state_dict", "raw save", 0.9)]
# Printed beside the targets: ours against the raw wheel doing the same work.
REFERENCES = [("ours save_state_dict", "raw save + hash", 0.9)]
HASH_PIECE = 16 << 20  # the manifest's checksum piece (docs/model_layout.md)


# ---- the child: one cold load -------------------------------------------------

def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_mark() -> tuple:
    """The machine's CPU time so far (busy, all) and this process's."""
    import resource

    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks), resource.getrusage(resource.RUSAGE_SELF)


def _cpu_since(mark: tuple) -> dict:
    now = _cpu_mark()
    return {"machine_busy": (now[0] - mark[0]) / max(1, now[1] - mark[1]),
            "user_s": now[2].ru_utime - mark[2].ru_utime, "sys_s": now[2].ru_stime - mark[2].ru_stime}


def _hash_threads() -> int:
    """As many threads as a save of ours hashes on (half its copy threads)."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, max(2, min(cores // 2, 8))) // 2)


def _hash_pieces(tensors: list) -> int:
    """XXH3 of every tensor in 16 MiB pieces on _hash_threads() threads, the
    work ours does for a manifest's checksums (ctypes drops the GIL)."""
    import ctypes
    import ctypes.util
    from concurrent.futures import ThreadPoolExecutor

    lib = ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0")
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pieces = [(t.data_ptr() + at, min(HASH_PIECE, t.nbytes - at)) for t in tensors for at in range(0, t.nbytes, HASH_PIECE)]
    with ThreadPoolExecutor(_hash_threads()) as pool:
        digests = list(pool.map(lambda p: lib.XXH3_64bits(*p), pieces))
    return len(digests)


def _word_sum(t) -> int:
    import torch

    return int(t.reshape(-1).view(torch.int16).sum(dtype=torch.int64))


def _check(row: str, names: list[str], got: dict, sums: list[int]) -> None:
    found = [_word_sum(got[n]) for n in names]
    if found != sums:
        bad = [n for n, a, b in zip(names, found, sums) if a != b]
        raise SystemExit(f"{row}: {len(bad)} tensors do not hold the model's bytes, e.g. {bad[:3]}")


def child(row: str, spec: dict, sample_no: int) -> dict:
    if row in SAVE_ROWS:
        return save_child(row, spec, sample_no)
    import numpy as np
    import torch

    names, shapes, sizes, device = spec["names"], spec["shapes"], spec["sizes"], spec["device"]
    if row.startswith("ours"):
        from mooncake_connector import create_remote_connector
    else:
        import ctypes

        from mooncake.store import MooncakeDistributedStore
    imported = time.time()
    rss_before = _peak_rss_mib()
    params: dict[str, torch.Tensor] = {}

    destinations_s = 0.0

    def fresh() -> dict[str, torch.Tensor]:
        # Host memory: fresh pages, zeros until written. Device memory: set
        # to zeros here, so that a load that wrote nothing fails the check.
        nonlocal destinations_s
        began = time.time()
        out = {n: torch.empty(s, dtype=torch.bfloat16, device=device) for n, s in zip(names, shapes)}
        if device != "cpu":
            for t in out.values():
                t.zero_()
            torch.cuda.synchronize()
        destinations_s = time.time() - began
        return out

    def in_place() -> float:
        if device != "cpu":
            torch.cuda.synchronize()
        return time.time()

    if device != "cpu":
        torch.empty(1, device=device)  # the CUDA context: part of the setup on both sides
    if row.startswith("ours"):
        c = create_remote_connector(spec["url"], device=device)
        c.exists("warm-up")  # the client is set up before the load starts
        if row in ("ours load_into", "ours weight_iterator"):
            params = fresh()
        start, cpu = time.time(), _cpu_mark()
        if row == "ours load_into":
            c.load_into(params)
        elif row == "ours load_state_dict":
            params = c.load_state_dict()
        else:
            for name, tensor in c.weight_iterator():
                params[name].data.copy_(tensor)
        done = in_place()
    else:
        total = sum(sizes)
        store = MooncakeDistributedStore()
        if spec["mode"] == "client":
            assert store.setup_dummy(total + (64 << 20), 256 << 20, spec["client_address"]) == 0
            ptr = store.alloc_from_mem_pool(total)
            assert ptr, "alloc_from_mem_pool failed"
            buf = np.ctypeslib.as_array((ctypes.c_uint8 * total).from_address(ptr))
        else:
            segment = spec["segment"] if spec["mode"] == "own" else 0
            assert store.setup("127.0.0.1", spec["metadata_server"], segment, 256 << 20, "tcp", "",
                               spec["master_address"]) == 0
            buf = np.empty(total, dtype=np.uint8)  # never touched: faulted in by the load
        if row == "raw load + copy":
            params = fresh()
        start, cpu = time.time(), _cpu_mark()
        assert store.register_buffer(buf.ctypes.data, total) == 0
        offsets = np.cumsum([0, *sizes[:-1]]).tolist()
        got = store.batch_get_into(spec["raw_keys"], [buf.ctypes.data + o for o in offsets], sizes)
        assert list(got) == sizes, got
        flat = torch.from_numpy(buf)
        views = {n: flat[o:o + s].view(torch.bfloat16).view(shape)
                 for n, o, s, shape in zip(names, offsets, sizes, shapes)}
        if row == "raw load + copy":
            for n in names:
                params[n].copy_(views[n])
        else:
            params = views  # onto a GPU: the fetch alone, to host memory
        done = in_place()
    cpu = _cpu_since(cpu)
    peak = _peak_rss_mib()
    _check(row, names, params, spec["sums"])
    return {"imported": imported, "start": start, "done": done, "peak_rss_growth_mib": peak - rss_before, "cpu": cpu,
            "destinations_s": destinations_s}


def save_prefix(spec: dict, row: str, sample_no: int) -> str:
    return f"cold-save/{spec['mode']}/{row.split()[0]}{sample_no}"


def save_child(row: str, spec: dict, sample_no: int) -> dict:
    """One cold save: the model read from the file first (an engine's weights,
    resident), then the client set up and the save timed; what it stored is
    read back and checked after the clock stops."""
    import numpy as np
    import safetensors.torch as st
    import torch

    names, sizes = spec["names"], spec["sizes"]
    if row.startswith("ours"):
        from mooncake_connector import create_remote_connector
    else:
        import ctypes

        from mooncake.store import MooncakeDistributedStore
    on_gpu = spec["device"] == "cuda"
    sd = st.load_file(spec["file"], device="cuda" if on_gpu else "cpu")
    if on_gpu:  # an engine's weights on its GPU; the peak restarts from here
        torch.cuda.synchronize()
        Path("/proc/self/clear_refs").write_text("5")
    imported = time.time()
    rss_before = _peak_rss_mib()
    prefix = save_prefix(spec, row, sample_no)
    if row.startswith("ours"):
        c = create_remote_connector(f"mooncake:///{prefix}")
        c.exists("warm-up")
        start, cpu = time.time(), _cpu_mark()
        c.save_state_dict(sd)
        done = time.time()
        cpu = _cpu_since(cpu)
        peak = _peak_rss_mib()
        got = c.load_state_dict()
    else:
        total = sum(sizes)
        store = MooncakeDistributedStore()
        keys = [f"{prefix}/{n}" for n in names]
        offsets = np.cumsum([0, *sizes[:-1]]).tolist()
        if spec["mode"] == "client":
            assert store.setup_dummy(total + (64 << 20), 256 << 20, spec["client_address"]) == 0
            ptr = store.alloc_from_mem_pool(total)
            assert ptr, "alloc_from_mem_pool failed"
            buf = torch.from_numpy(np.ctypeslib.as_array((ctypes.c_uint8 * total).from_address(ptr)))
            start, cpu = time.time(), _cpu_mark()
            assert store.register_buffer(ptr, total) == 0
            for n, o, size in zip(names, offsets, sizes):  # it puts only from its shared memory
                buf[o:o + size].copy_(sd[n].reshape(-1).view(torch.uint8))
            if on_gpu:
                torch.cuda.synchronize()
            ptrs = [ptr + o for o in offsets]
        elif on_gpu:  # the wheel puts from host memory: the rank copied there first, the equivalent work
            segment = spec["segment"] if spec["mode"] == "own" else 0
            assert store.setup("127.0.0.1", spec["metadata_server"], segment, 256 << 20, "tcp", "",
                               spec["master_address"]) == 0
            start, cpu = time.time(), _cpu_mark()
            buf = torch.empty(total, dtype=torch.uint8)
            for n, o, size in zip(names, offsets, sizes):
                buf[o:o + size].copy_(sd[n].reshape(-1).view(torch.uint8))
            torch.cuda.synchronize()
            assert store.register_buffer(buf.data_ptr(), total) == 0
            ptrs = [buf.data_ptr() + o for o in offsets]
        else:
            segment = spec["segment"] if spec["mode"] == "own" else 0
            assert store.setup("127.0.0.1", spec["metadata_server"], segment, 256 << 20, "tcp", "",
                               spec["master_address"]) == 0
            start, cpu = time.time(), _cpu_mark()
            ptrs = [sd[n].data_ptr() for n in names]
            for p, size in zip(ptrs, sizes):
                assert store.register_buffer(p, size) == 0
        if row == "raw save + hash":
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1) as aside:
                hashed = aside.submit(_hash_pieces, [buf[o:o + size] for o, size in zip(offsets, sizes)] if on_gpu
                                      else [sd[n] for n in names])
                res = store.batch_put_from(keys, ptrs, sizes)
                assert hashed.result() > 0
        else:
            res = store.batch_put_from(keys, ptrs, sizes)
        assert all(r == 0 for r in res), res
        done = time.time()
        cpu = _cpu_since(cpu)
        peak = _peak_rss_mib()
        got = {n: torch.frombuffer(bytearray(store.get(k)), dtype=torch.bfloat16) for n, k in zip(names, keys)}
    _check(row, names, got, spec["sums"])
    return {"imported": imported, "start": start, "done": done, "peak_rss_growth_mib": peak - rss_before, "cpu": cpu}


# ---- the parent ---------------------------------------------------------------

def sample(row: str, spec: dict, env: dict[str, str], sample_no: int) -> dict:
    spawned = time.time()
    out = subprocess.run([sys.executable, __file__, "--child", row, "--sample-no", str(sample_no)],
                         input=json.dumps(spec), env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"cold load ({row}) failed: {out.stderr[-3000:]}")
    t = json.loads(out.stdout.strip().splitlines()[-1])
    # Fresh GPU parameters are made and zeroed before the clock that matters
    # starts: an engine's parameters exist before its loader runs, and the
    # zeros are this bench's check. Fresh host memory costs nothing until the
    # load faults it in, which the clocks count.
    reset = t.get("destinations_s", 0.0) if spec["device"] != "cpu" else 0.0
    return {"total": t["done"] - spawned - reset, "setup + load": t["done"] - t["imported"] - reset,
            "load": t["done"] - t["start"], "peak_rss_growth_mib": t["peak_rss_growth_mib"], "cpu": t["cpu"],
            "destinations_s": t.get("destinations_s", 0.0)}


def run_mode(mode: str, sd: dict, samples: int, device: str, rows_wanted: list[str], file: str,
             log) -> list[dict]:
    import torch

    from bench import RawWheel, Sweeper, nbytes
    from mooncake_connector import create_remote_connector, standalone

    size = nbytes(sd)
    names = list(sd)
    # The model twice (ours and the raw wheel's, for the loads), a save's
    # copy and room to spare (Mooncake refuses puts above its high watermark).
    segment_mib = max(1024, ((5 if set(rows_wanted) & set(SAVE_ROWS) else 3) * size) >> 20)
    # Mooncake's own read lease (10 s), not standalone's short one: a first
    # load into fresh memory on a small machine can outlast a short lease,
    # and the raw wheel does not read again when it expires.
    with standalone.start(segment_size=f"{segment_mib}mb", local_buffer_size="256mb", lease_ttl_ms=None,
                          storage_processes=1) as inst:
        env = {**os.environ, **inst.env(), "MOONCAKE_LOCAL_BUFFER_SIZE": "256mb"}
        if mode == "own":
            env["MOONCAKE_GLOBAL_SEGMENT_SIZE"] = f"{segment_mib}mb"
        if mode == "client":
            env["MOONCAKE_CLIENT"] = inst.client_address
        url = f"mooncake:///cold/{mode}"
        with environ(inst.env()):
            with create_remote_connector(url) as c:
                c.save_state_dict(sd)
            raw = RawWheel(inst, "tcp", size, 0)
            try:
                sizes = [t.numel() * t.element_size() for t in sd.values()]
                offsets = [sum(sizes[:i]) for i in range(len(sizes))]
                for o, n, t in zip(offsets, sizes, sd.values()):
                    raw.buf[o:o + n] = t.reshape(-1).view(torch.uint8).numpy()
                raw_keys = [f"cold-raw/{mode}/{n}" for n in names]
                assert all(r == 0 for r in raw.store.batch_put_from(raw_keys, [raw.buf.ctypes.data + o for o in offsets],
                                                                    sizes))
            finally:
                raw.close()
        spec = {"mode": mode, "device": device, "url": url, "names": names, "shapes": [list(t.shape) for t in sd.values()],
                "sizes": sizes, "sums": [_word_sum(t) for t in sd.values()], "raw_keys": raw_keys,
                "segment": segment_mib << 20, "metadata_server": inst.metadata_server,
                "master_address": inst.master_address, "client_address": inst.client_address, "file": file}
        times: dict[str, list[dict]] = {row: [] for row in rows_wanted}
        sweeper = Sweeper(inst)
        try:
            for i in range(samples):
                order = rows_wanted[i % len(rows_wanted):] + rows_wanted[:i % len(rows_wanted)]  # each first in turn
                for row in order:
                    times[row].append(sample(row, spec, env, i))
                    if row in SAVE_ROWS:  # benchmark cleanup: its read-back's lease is not waited out
                        sweeper.sweep(save_prefix(spec, row, i))
                log(f"  {mode}: round {i + 1}/{samples} " +
                    " ".join(f"{row.split(' ', 1)[1]}={times[row][-1]['setup + load']:.2f}s" for row in rows_wanted))
        finally:
            sweeper.close()
    rows = []
    for row in rows_wanted:
        entry = {"mode": mode, "device": device, "row": row, "bytes": size, "samples": times[row]}
        for kind in ("total", "setup + load", "load"):
            values = [s[kind] for s in times[row]]
            entry[kind] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        entry["peak_rss_growth_mib"] = statistics.median(s["peak_rss_growth_mib"] for s in times[row])
        entry["cpu"] = {k: statistics.median(s["cpu"][k] for s in times[row]) for k in times[row][0]["cpu"]}
        rows.append(entry)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    checks = []
    by = {(r["mode"], r["row"]): r for r in rows}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for ours, raw, goal in TARGETS + REFERENCES:
            if (mode, ours) not in by or (mode, raw) not in by:
                continue  # a row left out (--rows)
            for kind in ("setup + load", "load"):
                ratio = by[(mode, raw)][kind]["median"] / by[(mode, ours)][kind]["median"]
                checks.append({"mode": mode, "target": f"{ours} vs {raw} ({kind})", "ratio": ratio, "goal": goal,
                               "met": ratio >= goal,
                               "counts": kind == "setup + load" and (ours, raw, goal) in TARGETS})
    return checks


def print_table(rows: list[dict], checks: list[dict]) -> None:
    print(f"\n{'mode':<7} {'row':<22} {'total s (min-max)':>22} {'setup+load s (min-max)':>24} "
          f"{'load s (min-max)':>22} {'GiB/s':>6} {'peak MiB':>9}")
    for r in rows:
        cells = [f"{r[k]['median']:.2f} ({r[k]['min']:.2f}-{r[k]['max']:.2f})" for k in ("total", "setup + load", "load")]
        print(f"{r['mode']:<7} {r['row']:<22} {cells[0]:>22} {cells[1]:>24} {cells[2]:>22} "
              f"{r['bytes'] / GiB / r['load']['median']:6.2f} {r['peak_rss_growth_mib']:9.0f}")
    print(f"\n{'CPU during load (medians)':<30} {'machine busy':>12} {'user s':>7} {'sys s':>7}")
    for r in rows:
        c = r["cpu"]
        print(f"{r['mode']:<7} {r['row']:<22} {c['machine_busy']:12.0%} {c['user_s']:7.2f} {c['sys_s']:7.2f}")
    print(f"\n{'target (ratio of medians, raw time / ours)':<66} {'mode':<7} {'ratio':>6} {'goal':>6}")
    for t in checks:
        note = ("met" if t["met"] else "MISSED") if t["counts"] else \
            "(the same work, for reference)" if t["target"].endswith("hash (setup + load)") else \
            "(load alone, for reference)"
        print(f"{t['target']:<66} {t['mode']:<7} {t['ratio']:6.2f} {t['goal']:6.2f} {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_args(parser, "bench/results/cold_start.json")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="where the weights go: cpu, or cuda (the GPU rows)")
    parser.add_argument("--rows", default=None,
                        help="the rows to time (default: all)")
    parser.add_argument("--child", choices=ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--sample-no", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(sys.stdin.read()), args.sample_no)))
        return
    os.environ.setdefault("GLOG_minloglevel", "3")
    import safetensors.torch

    from bench import llama_like, nbytes

    modes = parse_modes(parser, args.modes)
    default_rows = ",".join(ROWS)
    if args.rows is None:
        args.rows = default_rows
    rows_wanted = [r for r in args.rows.split(",") if r]
    if set(rows_wanted) - set(ROWS):
        parser.error(f"unknown rows {sorted(set(rows_wanted) - set(ROWS))}: choose from {', '.join(ROWS)}")
    sd = llama_like(11, 2048, 16384) if args.full else llama_like(1, 512, 2048) if args.tiny else \
        llama_like(3, 1536, 8192)
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"cold start onto {args.device}: llama-like, {len(sd)} bf16 tensors, {nbytes(sd) / GiB:.3f} GiB; "
        f"{args.samples} samples per row, each a new process")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        file = str(Path(tmp) / "model.safetensors")  # what a save row's process holds before it saves
        if any(r in SAVE_ROWS for r in rows_wanted):
            safetensors.torch.save_file(sd, file)
        rows = [r for mode in modes for r in run_mode(mode, sd, args.samples, args.device, rows_wanted, file, log)]
    checks = targets(rows)
    print_table(rows, checks)
    command = "python bench/cold_start.py" + (" --full" if args.full else " --tiny" if args.tiny else "") + \
        (f" --modes {args.modes}" if args.modes != "tcp,own,client" else "") + \
        (f" --samples {args.samples}" if args.samples != 5 else "") + \
        (f" --device {args.device}" if args.device != "cpu" else "") + \
        (f" --rows '{args.rows}'" if args.rows != default_rows else "")
    write_result(args.out, "cold_start", command, seconds=time.monotonic() - start, rows=rows, targets=checks)


if __name__ == "__main__":
    main()
