"""The performance harness (`make bench`): every way of moving the same weights,
side by side in one run against the same instance, in the three ways a
Mooncake client is deployed. Prints a table, writes JSON and a PNG chart.

Data: a Llama-like bf16 state dict (embedding, per-layer q/k/v/o,
gate/up/down, norms) and a many-small-tensors case. Rows (best of --repeat):

  a. ours: weight_iterator, load_state_dict, load_into (preallocated, reused),
     save_state_dict (a new model each time, and again over a stored model
     whose every tensor changed); get (per key) of every tensor;
  b. raw wheel: one batch_get_into / batch_put_from into a pre-registered
     buffer (Mooncake's own ceiling through its Python API);
  c. the seed connector's way: per-key put/get of safetensors bytes through
     the raw wheel, then safetensors.torch.load;
  d. local .safetensors file with safetensors.torch.load_file (warm cache);
  e. memory:// load_state_dict, and memcpy of the same bytes with 1 and 2
     threads into fresh and into reused memory;
  f. small values: setstr/getstr p50/p99 against the raw wheel's put/get;
  g. peak RSS growth of each load (VmHWM, reset before each load).

Deployment modes (--modes):
  tcp     a storage process holds the memory, the reader is a pure client;
  own     the reader contributes the only segment (master without storage);
  client  standalone-client mode: MOONCAKE_CLIENT points at the storage
          process, the reader is a dummy client over shared memory.

Targets (issue 8) are checked as ratios within each mode and printed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from harness import add_load_args, best, environ, parse_modes, write_result
from mooncake_connector import create_remote_connector, standalone

GiB = 2**30
_libc = ctypes.CDLL("libc.so.6")


def llama_like(layers: int, hidden: int, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    inter = hidden * 8 // 3

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    sd = {"model.embed_tokens.weight": w(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj in ("q", "k", "v", "o"):
            sd[f"{p}.self_attn.{proj}_proj.weight"] = w(hidden, hidden)
        sd[f"{p}.mlp.gate_proj.weight"] = w(inter, hidden)
        sd[f"{p}.mlp.up_proj.weight"] = w(inter, hidden)
        sd[f"{p}.mlp.down_proj.weight"] = w(hidden, inter)
        sd[f"{p}.input_layernorm.weight"] = w(hidden)
        sd[f"{p}.post_attention_layernorm.weight"] = w(hidden)
    sd["model.norm.weight"] = w(hidden)
    return sd


def many_small(n: int, kib: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {f"small.{i}.weight": torch.randn(kib * 512, generator=g).to(torch.bfloat16) for i in range(n)}


def nbytes(sd: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


# ---- timing and memory -----------------------------------------------------

def _status_mib(field: str) -> float:
    m = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def peak_growth_mib(fn: Callable[[], Any]) -> float:
    """How far the resident set rose above where it stood while fn ran
    (VmHWM reset through /proc/self/clear_refs before; the result is kept
    until the peak is read)."""
    gc.collect()
    _libc.malloc_trim(0)  # memory freed before is not counted as resident
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    base = _status_mib("VmRSS")
    result = fn()
    peak = _status_mib("VmHWM")
    del result
    return peak - base


def latencies_us(fn: Callable[[int], Any], count: int) -> tuple[float, float]:
    """p50 and p99 of `count` calls of fn(i), in microseconds."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


# ---- the raw wheel ---------------------------------------------------------

class RawWheel:
    """The Mooncake wheel's own client, with one buffer of `size` bytes that
    Mooncake can transfer into (registered, or from the dummy client's
    shared pool in standalone-client mode)."""

    def __init__(self, inst: Any, mode: str, size: int, segment: int, touch: bool = True):
        from mooncake.store import MooncakeDistributedStore

        self.inst = inst
        self.store = MooncakeDistributedStore()
        if mode == "client":
            rc = self.store.setup_dummy(size + (64 << 20), 256 << 20, inst.client_address)
            assert rc == 0, f"setup_dummy: {rc}"
            ptr = self.store.alloc_from_mem_pool(size)
            assert ptr, "alloc_from_mem_pool failed"
            self.buf = np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(ptr))
            assert self.store.register_buffer(ptr, size) == 0
        else:
            rc = self.store.setup("127.0.0.1", inst.metadata_server, segment, 256 << 20, "tcp", "",
                                  inst.master_address)
            assert rc == 0, f"setup: {rc}"
            self.buf = np.empty(size, dtype=np.uint8)
            if touch:
                self.buf.fill(0)
            assert self.store.register_buffer(self.buf.ctypes.data, size) == 0

    def close(self) -> None:
        self.store.close()


class Sweeper:
    """A client without memory of its own that force-removes what a save
    row wrote, so that the next save reuses the same store memory, as the raw
    rows' saves do (a save into memory the store never touched before runs at
    the speed of first-touch page faults, whoever writes it). Benchmark
    cleanup only: nothing reads these keys."""

    def __init__(self, inst: Any):
        from mooncake.store import MooncakeDistributedStore

        self.store = MooncakeDistributedStore()
        rc = self.store.setup("127.0.0.1", inst.metadata_server, 0, 16 << 20, "tcp", "", inst.master_address)
        assert rc == 0, f"setup: {rc}"

    def sweep(self, prefix: str) -> None:
        assert self.store.remove_by_regex("^" + re.escape(prefix), True) >= 0

    def close(self) -> None:
        self.store.close()


# ---- one deployment mode ----------------------------------------------------

def run_mode(mode: str, models: dict[str, dict[str, torch.Tensor]], repeat: int, small_ops: int,
             rows: list[dict], log: Callable[[str], None]) -> None:
    """Both clients in one instance; in `own` mode each client in an instance
    of its own where it contributes the only segment (so each reads its own
    memory: a raw client without a segment would read ours over TCP)."""
    if mode == "own":
        run_instance(mode, models, repeat, small_ops, rows, log, ours=False, raw=True)
        run_instance(mode, models, repeat, small_ops, rows, log, ours=True, raw=False)
    else:
        run_instance(mode, models, repeat, small_ops, rows, log, ours=True, raw=True)


def run_instance(mode: str, models: dict[str, dict[str, torch.Tensor]], repeat: int, small_ops: int,
                 rows: list[dict], log: Callable[[str], None], ours: bool, raw: bool) -> None:
    biggest = max(nbytes(sd) for sd in models.values())
    segment_mib = max(1024, (10 * biggest) >> 20)
    # Mooncake's own read lease (10 s): a first load into fresh memory can
    # outlast a short one, and the raw wheel does not read again when it
    # expires. The segment holds every copy the run writes (only the raw
    # wheel's save copies, never read, are removed as it goes: a read key
    # waits out its lease).
    with standalone.start(segment_size=f"{segment_mib}mb", local_buffer_size="256mb", lease_ttl_ms=None,
                          storage_processes=0 if mode == "own" else 1) as inst:
        env = inst.env()
        env["MOONCAKE_LOCAL_BUFFER_SIZE"] = "256mb"
        if mode == "own":
            env["MOONCAKE_GLOBAL_SEGMENT_SIZE"] = f"{segment_mib}mb"
        if mode == "client":
            env["MOONCAKE_CLIENT"] = inst.client_address
        with environ(env):
            raw_client = RawWheel(inst, mode, biggest, segment_mib << 20 if mode == "own" else 0) if raw else None
            sweeper = Sweeper(inst) if ours else None
            try:
                for case, sd in models.items():
                    if raw_client:
                        run_raw(mode, case, sd, raw_client, repeat, rows, log)
                    if ours:
                        run_ours(mode, case, sd, repeat, rows, log, sweeper)
                run_small_values(mode, raw_client, ours, small_ops, rows, log)
            finally:
                for client in (raw_client, sweeper):
                    if client:
                        client.close()


def add(rows: list[dict], mode: str, case: str, row: str, group: str, size: int, secs: float,
        rss: float = float("nan")) -> None:
    rows.append({"mode": mode, "case": case, "row": row, "group": group, "bytes": size, "seconds": secs,
                 "gib_s": size / GiB / secs, "peak_rss_growth_mib": rss})


def changed_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` whose bytes differ from it (the first byte flipped)."""
    out = t.clone()
    if out.numel():
        out.view(-1).view(torch.uint8)[0] ^= 0xFF
    return out


def time_rows(mode: str, case: str, size: int, repeat: int, rows: list[dict], log: Callable[[str], None],
              loads: dict[str, Callable[[], Any]],
              saves: dict[str, tuple[Callable[[], Any], Callable[[], Any]]]) -> None:
    """Loads: warmed once (destination pages, connections), then best of
    `repeat`, then once more for the peak RSS. Saves: each writes a copy; the
    one the previous run left is removed first (untimed)."""
    for row, fn in loads.items():
        fn()
        secs = best(fn, repeat)
        add(rows, mode, case, row, "load", size, secs, peak_growth_mib(fn))
        log(f"  {mode:<6} {case:<6} {row:<32} {size / GiB / secs:6.2f} GiB/s")
    for row, (fn, drop) in saves.items():
        secs = best(fn, repeat, drop)
        drop()
        add(rows, mode, case, row, "save", size, secs)
        log(f"  {mode:<6} {case:<6} {row:<32} {size / GiB / secs:6.2f} GiB/s")


def run_raw(mode: str, case: str, sd: dict[str, torch.Tensor], raw: RawWheel, repeat: int,
            rows: list[dict], log: Callable[[str], None]) -> None:
    """(b) the raw wheel's batch calls and (c) the seed connector's per-key way."""
    import safetensors.torch as st

    names = list(sd)
    sizes = [t.numel() * t.element_size() for t in sd.values()]
    offsets = np.cumsum([0, *sizes[:-1]]).tolist()
    for off, t in zip(offsets, sd.values()):
        raw.buf[off:off + t.numel() * t.element_size()] = t.reshape(-1).view(torch.uint8).numpy()
    ptrs = [raw.buf.ctypes.data + off for off in offsets]

    def raw_put(prefix: str) -> list[str]:
        keys = [f"{prefix}/{case}/{n}" for n in names]
        res = raw.store.batch_put_from(keys, ptrs, sizes)
        assert all(r == 0 for r in res), res
        return keys

    def raw_get():
        got = raw.store.batch_get_into(raw_keys, ptrs, sizes)
        assert list(got) == sizes, got

    def seed_put(prefix: str):
        for n, t in sd.items():
            assert raw.store.put(f"{prefix}/{case}/{n}", st.save({"t": t})) == 0

    def seed_get():
        return {n: st.load(raw.store.get(f"seedload/{case}/{n}"))["t"] for n in names}

    def drop(prefix: str):
        for n in names:
            raw.store.remove(f"{prefix}/{case}/{n}")

    raw_keys = raw_put("rawload")
    seed_put("seedload")
    if mode != "own":
        setup, first = in_new_process("raw", {"mode": mode, "keys": raw_keys, "sizes": sizes, "inst": {
            "metadata_server": raw.inst.metadata_server, "master_address": raw.inst.master_address,
            "client_address": raw.inst.client_address}})
        add_first_rows(rows, mode, case, "raw", nbytes(sd), setup, first, log)
    time_rows(mode, case, nbytes(sd), repeat, rows, log,
              {"raw batch_get_into": raw_get, "seed per-key get + load": seed_get},
              {"raw batch_put_from": (lambda: raw_put("rawsave"), lambda: drop("rawsave")),
               "seed per-key put": (lambda: seed_put("seedsave"), lambda: drop("seedsave"))})
    got = seed_get()
    assert all(torch.equal(got[n].view(torch.uint8), t.view(torch.uint8)) for n, t in sd.items())


def run_ours(mode: str, case: str, sd: dict[str, torch.Tensor], repeat: int, rows: list[dict],
             log: Callable[[str], None], sweeper: Sweeper) -> None:
    """(a) our loads and save over mooncake://."""
    url = f"mooncake:///bench/{mode}/{case}"
    with create_remote_connector(url) as c:
        c.save_state_dict(sd)
        for n, t in sd.items():
            c.set(f"keys/{case}/{n}", t)
        dest = {n: torch.empty_like(t) for n, t in sd.items()}

        saves = [0]

        def save_ours():
            # A new model each time: removing the last one with remove_model
            # would wait out the read lease its save took on the manifest
            # (Mooncake's 10 s); the sweeper removes it instead (untimed).
            saves[0] += 1
            with create_remote_connector(f"{url}-save{saves[0]}") as s:
                s.save_state_dict(sd)

        # Saving again over a model whose every tensor changed (as a
        # checkpoint saved under one name each time): every checksum differs
        # from the manifest's, so nothing is read back; each value is
        # overwritten. Two versions saved in turn, so that each run changes
        # every value.
        changed = {n: changed_copy(t) for n, t in sd.items()}
        versions = [changed, sd]
        with create_remote_connector(f"{url}-over") as o:
            o.save_state_dict(sd)
        overwrites = [0]

        def save_over():
            overwrites[0] += 1
            with create_remote_connector(f"{url}-over") as o:
                o.save_state_dict(versions[overwrites[0] % 2])

        if mode != "own":  # another process would read this one's segment over TCP
            setup, first = in_new_process("ours", {"url": url})
            add_first_rows(rows, mode, case, "ours", nbytes(sd), setup, first, log)
        time_rows(mode, case, nbytes(sd), repeat, rows, log,
                  {"ours load_into (preallocated)": lambda: c.load_into(dest),
                   "ours load_state_dict": c.load_state_dict,
                   # As SGLang's loader uses it: each batch copied into the
                   # engine's parameters and dropped (the copy is the
                   # consumer's work, left out of both rows).
                   "ours weight_iterator": lambda: sum(1 for _ in c.weight_iterator()),
                   "ours weight_iterator (all kept)": lambda: list(c.weight_iterator()),
                   "ours get per key": lambda: [c.get(f"keys/{case}/{n}") for n in sd]},
                  {"ours save_state_dict": (save_ours, lambda: sweeper.sweep(f"bench/{mode}/{case}-save")),
                   "ours save_state_dict (overwrite)": (save_over, lambda: None)})
        assert all(torch.equal(dest[n].view(torch.uint8), t.view(torch.uint8)) for n, t in sd.items())


# A loader's real case: the first load of a process, into memory it has never
# touched. The other rows repeat loads in one process, which reuse memory
# freed before. Two rows each: the load alone, after the client is set up
# (untimed), and the load with that setup. They differ in what they leave
# out: the raw wheel's destination is made before its load (in
# standalone-client mode, shared memory the wheel populates page by page in
# setup_dummy), ours as the load goes (fresh pages, faulted in during the
# load), so only the second pair counts both sides' page faults.
FIRST_OURS = "ours load_state_dict (first in a process)"
FIRST_RAW = "raw batch_get_into (first in a process)"
FIRST_OURS_SETUP = "ours load_state_dict (first, with setup)"
FIRST_RAW_SETUP = "raw batch_get_into (first, with setup)"


def in_new_process(what: str, spec: dict) -> tuple[float, float]:
    """Seconds of the client's setup and of one first load (`what`: ours or
    raw) in a new process."""
    out = subprocess.run([sys.executable, __file__, "--first-load", what], input=json.dumps(spec),
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"first load ({what}) failed: {out.stderr[-2000:]}")
    setup, load = out.stdout.split()[-2:]
    return float(setup), float(load)


def first_load_child(what: str) -> None:
    spec = json.loads(sys.stdin.read())
    begin = time.perf_counter()
    if what == "ours":
        c = create_remote_connector(spec["url"])
        c.exists("warm-up")
        start = time.perf_counter()
        c.load_state_dict()
    else:
        sizes = spec["sizes"]
        inst = types.SimpleNamespace(**spec["inst"])
        raw = RawWheel(inst, spec["mode"], sum(sizes), 0, touch=False)
        ptrs = (raw.buf.ctypes.data + np.cumsum([0, *sizes[:-1]])).tolist()
        start = time.perf_counter()
        got = raw.store.batch_get_into(spec["keys"], ptrs, sizes)
        assert list(got) == sizes, got
    end = time.perf_counter()
    print(start - begin, end - start)


def add_first_rows(rows: list[dict], mode: str, case: str, who: str, size: int, setup: float, load: float,
                   log: Callable[[str], None]) -> None:
    for row, secs in (((FIRST_OURS, load), (FIRST_OURS_SETUP, setup + load)) if who == "ours" else
                      ((FIRST_RAW, load), (FIRST_RAW_SETUP, setup + load))):
        add(rows, mode, case, row, "load", size, secs)
        log(f"  {mode:<6} {case:<6} {row:<32} {size / GiB / secs:6.2f} GiB/s")


def run_small_values(mode: str, raw: RawWheel | None, ours: bool, count: int, rows: list[dict],
                     log: Callable[[str], None]) -> None:
    """(f) 100-byte values, one call each. Also the raw wheel's existence
    check and that check followed by a put (what our setstr of a new key
    does: Mooncake's put over an existing key keeps the old value and
    reports success)."""
    value = "x" * 100
    data = value.encode()
    found: dict[str, tuple[float, float]] = {}
    if ours:
        with create_remote_connector(f"mooncake:///bench/{mode}/kv") as c:
            found["ours setstr"] = latencies_us(lambda i: c.setstr(f"s{i}", value), count)
            found["ours getstr"] = latencies_us(lambda i: c.getstr(f"s{i}"), count)
    if raw:
        found["raw put"] = latencies_us(lambda i: raw.store.put(f"rs{mode}{i}", data), count)
        found["raw get"] = latencies_us(lambda i: raw.store.get(f"rs{mode}{i}"), count)
        found["raw get_size (missing key)"] = latencies_us(lambda i: raw.store.get_size(f"rm{mode}{i}"), count)

        def checked_put(i: int) -> None:
            assert raw.store.get_size(f"rc{mode}{i}") < 0
            assert raw.store.put(f"rc{mode}{i}", data) == 0

        found["raw get_size + put"] = latencies_us(checked_put, count)
    for row, (p50, p99) in found.items():
        rows.append({"mode": mode, "case": "small-value", "row": row, "group": "latency",
                     "p50_us": p50, "p99_us": p99, "count": count})
        log(f"  {mode:<6} 100-byte {row:<28} p50 {p50:7.1f} us  p99 {p99:7.1f} us")


# ---- mode-independent rows --------------------------------------------------

def run_local(models: dict[str, dict[str, torch.Tensor]], repeat: int, rows: list[dict],
              log: Callable[[str], None]) -> None:
    import safetensors.torch as st

    for case, sd in models.items():
        size = nbytes(sd)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.safetensors")
            st.save_file(sd, path)
            dest = {n: torch.empty_like(t) for n, t in sd.items()}

            def load_and_copy():
                # load_file maps the file: its tensors are read when touched,
                # here by the copy into the model's parameters, as a loader does.
                for n, t in st.load_file(path).items():
                    dest[n].copy_(t)

            for row, fn in (("safetensors load_file (mmap, not read)", lambda: st.load_file(path)),
                            ("safetensors load_file + copy_ into preallocated", load_and_copy)):
                fn()  # warm page cache
                secs = best(fn, repeat)
                add(rows, "local", case, row, "load", size, secs, peak_growth_mib(fn))
                log(f"  local  {case:<6} {row:<32} {size / GiB / secs:6.2f} GiB/s")
        with create_remote_connector(f"memory://bench-{case}/model") as m:
            m.save_state_dict(sd)
            fn = m.load_state_dict
            fn()
            secs = best(fn, repeat)
            add(rows, "memory", case, "ours load_state_dict", "load", size, secs, peak_growth_mib(fn))
            dest = {n: torch.empty_like(t) for n, t in sd.items()}
            fn = lambda: m.load_into(dest)  # noqa: E731
            fn()
            secs = best(fn, repeat)
            add(rows, "memory", case, "ours load_into (preallocated)", "load", size, secs, peak_growth_mib(fn))
            log(f"  memory {case:<6} load_state_dict / load_into     "
                f"{size / GiB / rows[-2]['seconds']:6.2f} / {size / GiB / secs:6.2f} GiB/s")
        flat = [t.reshape(-1).view(torch.uint8) for t in sd.values()]
        reused = torch.empty(size, dtype=torch.uint8)
        reused.fill_(0)
        for threads in (1, 2):
            for fresh in (True, False):
                def copy(threads=threads, fresh=fresh):
                    dst = torch.empty(size, dtype=torch.uint8) if fresh else reused
                    memcpy(dst, flat, threads)
                    return dst
                secs = best(copy, repeat)
                row = f"memcpy {threads} thread{'s' if threads > 1 else ''} into {'fresh' if fresh else 'reused'}"
                add(rows, "memory", case, row, "load", size, secs)
                log(f"  memory {case:<6} {row:<32} {size / GiB / secs:6.2f} GiB/s")


def memcpy(dst: torch.Tensor, parts: list[torch.Tensor], threads: int) -> None:
    """Copies parts back to back into dst, split over `threads` threads by
    bytes (torch's copy_ releases the GIL)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        total = dst.numel()
        bounds = [total * i // threads for i in range(threads + 1)]
        jobs: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(threads)]
        at = 0
        for p in parts:
            n = p.numel()
            for k in range(threads):
                lo, hi = max(at, bounds[k]), min(at + n, bounds[k + 1])
                if lo < hi:
                    jobs[k].append((dst[lo:hi], p[lo - at:hi - at]))
            at += n

        def work(pairs):
            for d, s in pairs:
                d.copy_(s)

        ts = [threading.Thread(target=work, args=(j,)) for j in jobs[1:]]
        for t in ts:
            t.start()
        work(jobs[0])
        for t in ts:
            t.join()
    finally:
        torch.set_num_threads(prev)


# ---- targets, table, chart --------------------------------------------------

def find(rows: list[dict], mode: str, case: str, row: str) -> dict | None:
    return next((r for r in rows if r["mode"] == mode and r["case"] == case and r["row"] == row), None)


def targets(rows: list[dict], modes: list[str], sizes: dict[str, int]) -> list[dict]:
    out = []

    def check(what: str, mode: str, case: str, ratio: float, goal: float, higher: bool = True) -> None:
        out.append({"target": what, "mode": mode, "case": case, "ratio": ratio, "goal": goal,
                    "met": ratio >= goal if higher else ratio <= goal})

    for mode in modes:
        for case in sizes:
            raw = find(rows, mode, case, "raw batch_get_into")
            for row, goal in (("ours load_into (preallocated)", 0.95), ("ours weight_iterator", 0.9)):
                r = find(rows, mode, case, row)
                check(f"{row} vs raw batch_get_into", mode, case, raw["seconds"] / r["seconds"], goal)
            for ours_row, raw_row in ((FIRST_OURS, FIRST_RAW), (FIRST_OURS_SETUP, FIRST_RAW_SETUP)):
                first_ours, first_raw = find(rows, mode, case, ours_row), find(rows, mode, case, raw_row)
                if first_ours and first_raw:
                    check(f"{ours_row} vs {raw_row}", mode, case, first_raw["seconds"] / first_ours["seconds"], 0.9)
            put = find(rows, mode, case, "raw batch_put_from")
            save = find(rows, mode, case, "ours save_state_dict")
            check("ours save_state_dict vs raw batch_put_from", mode, case, put["seconds"] / save["seconds"], 0.9)
            per_key = find(rows, mode, case, "ours get per key")
            seed = find(rows, mode, case, "seed per-key get + load")
            check("ours get per key vs seed per-key get", mode, case, seed["seconds"] / per_key["seconds"], 1.0)
            for r in rows:
                if (r["mode"] == mode and r["case"] == case and r["row"].startswith("ours") and r["group"] == "load"
                        and r["peak_rss_growth_mib"] == r["peak_rss_growth_mib"]):  # measured (not NaN)
                    limit = 1.1 * sizes[case] / 2**20 + 256
                    check(f"peak RSS growth of {r['row']} vs 1.1x model + 256 MiB", mode, case,
                          r["peak_rss_growth_mib"] / limit, 1.0, higher=False)
        for op, base in (("setstr", "put"), ("getstr", "get")):
            ours = find(rows, mode, "small-value", f"ours {op}")
            raw = find(rows, mode, "small-value", f"raw {base}")
            check(f"small-value {op} p50 vs raw {base}", mode, "small-value", ours["p50_us"] / raw["p50_us"], 1.2,
                  higher=False)
    for case in sizes:
        mem = find(rows, "memory", case, "ours load_into (preallocated)")
        cp = find(rows, "memory", case, "memcpy 2 threads into reused")
        if mem and cp:
            check("memory:// load_into vs 2-thread memcpy into reused", "memory", case,
                  cp["seconds"] / mem["seconds"], 0.7)
    return out


def print_table(rows: list[dict], sizes: dict[str, int]) -> None:
    for case, size in sizes.items():
        print(f"\n{case}: {size / GiB:.3f} GiB")
        print(f"{'mode':<7} {'row':<36} {'GiB/s':>7} {'vs raw':>7} {'RSS+ MiB':>9}")
        for r in rows:
            if r["case"] != case:
                continue
            base_row = ("raw batch_put_from" if r["group"] == "save" else
                        FIRST_RAW_SETUP if "with setup" in r["row"] else
                        FIRST_RAW if "first in a process" in r["row"] else "raw batch_get_into")
            base = find(rows, r["mode"], case, base_row)
            ratio = f"{base['seconds'] / r['seconds']:7.2f}" if base else f"{'':>7}"
            rss = r["peak_rss_growth_mib"]
            rss_text = f"{rss:9.0f}" if rss == rss else f"{'':>9}"
            print(f"{r['mode']:<7} {r['row']:<36} {r['gib_s']:7.2f} {ratio} {rss_text}")
    lat = [r for r in rows if r["group"] == "latency"]
    if lat:
        print(f"\nsmall values (100 bytes, {lat[0]['count']} each)")
        print(f"{'mode':<7} {'op':<28} {'p50 us':>8} {'p99 us':>8}")
        for r in lat:
            print(f"{r['mode']:<7} {r['row']:<28} {r['p50_us']:8.1f} {r['p99_us']:8.1f}")
        for mode in dict.fromkeys(r["mode"] for r in lat):
            ours, checked = find(rows, mode, "small-value", "ours setstr"), find(rows, mode, "small-value",
                                                                               "raw get_size + put")
            if ours and checked:
                print(f"{mode:<7} ours setstr p50 / raw get_size + put p50: {ours['p50_us'] / checked['p50_us']:.2f}")


def print_targets(checks: list[dict]) -> None:
    print(f"\n{'target':<72} {'mode':<7} {'case':<11} {'ratio':>6} {'goal':>6}")
    for t in checks:
        sign = ">=" if "RSS" not in t["target"] and "p50" not in t["target"] else "<="
        print(f"{t['target']:<72} {t['mode']:<7} {t['case']:<11} {t['ratio']:6.2f} {sign}{t['goal']:<4} "
              f"{'met' if t['met'] else 'MISSED'}")


def chart(rows: list[dict], case: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The lazily mapped file is left out: it moves no bytes and would dwarf the rest.
    picked = [r for r in rows if r["case"] == case and "gib_s" in r and "not read" not in r["row"]]
    labels = [f"{r['mode']}: {r['row']}" for r in picked]
    colors = ["tab:blue" if r["row"].startswith("ours") else
              "tab:orange" if r["row"].startswith("raw") else "tab:gray" for r in picked]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(picked) + 1.2))
    ax.barh(range(len(picked)), [r["gib_s"] for r in picked], color=colors)
    ax.set_yticks(range(len(picked)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("GiB/s (higher is better)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_args(parser, "bench/results/bench.json")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small-ops", type=int, default=1000)
    parser.add_argument("--first-load", choices=["ours", "raw"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_load:
        first_load_child(args.first_load)
        return
    os.environ.setdefault("GLOG_minloglevel", "3")
    modes = parse_modes(parser, args.modes)

    if args.full:
        llama, small = llama_like(11, 2048, 16384), many_small(2048, 16)
    elif args.tiny:
        llama, small = llama_like(1, 512, 2048), many_small(32, 16)
    else:
        llama, small = llama_like(3, 1536, 8192), many_small(512, 16)
    models = {"llama": llama, "small": small}
    sizes = {case: nbytes(sd) for case, sd in models.items()}
    start = time.monotonic()
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"llama-like: {len(llama)} bf16 tensors, {sizes['llama'] / GiB:.3f} GiB; "
        f"small: {len(small)} x 16 KiB; best of {args.repeat}")
    rows: list[dict] = []
    run_local(models, args.repeat, rows, log)
    for mode in modes:
        run_mode(mode, models, args.repeat, args.small_ops, rows, log)
    checks = targets(rows, modes, sizes)
    print_table(rows, sizes)
    print_targets(checks)
    out = Path(args.out)
    command = "python bench/bench.py" + (" --full" if args.full else " --tiny" if args.tiny else "") + \
        (f" --modes {args.modes}" if args.modes != "tcp,own,client" else "")
    write_result(str(out), "bench", command, seconds=time.monotonic() - start, sizes=sizes, rows=rows,
                 targets=checks)
    for case in models:
        chart(rows, case, out.with_name(f"{out.stem}_{case}.png"),
              f"{case} ({sizes[case] / GiB:.2f} GiB), {command}")


if __name__ == "__main__":
    main()
