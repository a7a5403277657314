"""Where a load's time goes: `perf record -g` on this process while one of our
loads (or the raw wheel's batch_get_into) repeats over mooncake://, in one of
the deployment modes of bench/bench.py; prints the top of `perf report`
(self time by shared object and symbol) and writes it to
bench/results/profile_<mode>_<row>.txt. Setup (instance, save, allocation of
reused destinations) is not profiled: perf attaches after it. `--row first_load`
profiles one load_state_dict in a new process (tcp and client modes), from just
after it connected.

    python bench/profile_load.py --mode own --row load_into      (make bench-profile)

Needs `perf` (Debian: linux-perf) and permission to profile this process
(root, or kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import RawWheel, Sweeper, llama_like, many_small, nbytes  # noqa: E402
from mooncake_connector import create_remote_connector, standalone  # noqa: E402

ROWS = ("load_into", "load_state_dict", "weight_iterator", "raw", "save", "raw_save", "first_load")


def record(perf: str, data: Path) -> subprocess.Popen:
    """perf record on this process, attached when this returns."""
    rec = subprocess.Popen([perf, "record", "-q", "-g", "-F", "499", "-o", str(data), "-p", str(os.getpid())],
                           stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return rec


def first_load_child(url: str, data: str) -> None:
    """One load_state_dict in this new process (after connecting), under perf."""
    c = create_remote_connector(url)
    c.exists("warm-up")
    rec = record(shutil.which("perf"), Path(data))
    start = time.perf_counter()
    c.load_state_dict()
    print(time.perf_counter() - start)
    rec.send_signal(signal.SIGINT)
    rec.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("tcp", "own", "client"), default="own")
    parser.add_argument("--row", choices=ROWS, default="load_into")
    parser.add_argument("--case", choices=("llama", "small"), default="llama",
                        help="bench.py's quick Llama-like model, or its 2048 tensors of 16 KiB")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to profile")
    parser.add_argument("--batch-mib", type=int, default=256, help="our loads' batch_bytes, in MiB")
    parser.add_argument("--top", type=int, default=40, help="lines of the report to keep")
    parser.add_argument("--first-load-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_load_child:
        first_load_child(*args.first_load_child)
        return
    if args.row == "first_load" and args.mode == "own":
        sys.exit("profile_load: a first load in a new process is for --mode tcp or client (in own mode the data "
                 "lives in the saving process's segment)")
    perf = shutil.which("perf")
    if perf is None:
        sys.exit("profile_load: perf not found (Debian: apt-get install linux-perf)")
    sd = llama_like(3, 1536, 8192) if args.case == "llama" else many_small(2048, 16)
    size = nbytes(sd)
    segment_mib = max(1024, (10 * size) >> 20)
    with standalone.start(segment_size=f"{segment_mib}mb", local_buffer_size="256mb", lease_ttl_ms=None,
                          storage_processes=0 if args.mode == "own" else 1) as inst:
        env = inst.env()
        env["MOONCAKE_LOCAL_BUFFER_SIZE"] = "256mb"
        if args.mode == "own":
            env["MOONCAKE_GLOBAL_SEGMENT_SIZE"] = f"{segment_mib}mb"
        if args.mode == "client":
            env["MOONCAKE_CLIENT"] = inst.client_address
        os.environ.update(env)
        sweeper = Sweeper(inst)
        prefix = "profile/"

        def between():  # saves write into memory the store has used before (bench.py's Sweeper)
            if args.row in ("save", "raw_save"):
                sweeper.sweep(prefix)

        if args.row in ("raw", "raw_save"):
            raw = RawWheel(inst, args.mode, size, segment_mib << 20 if args.mode == "own" else 0)
            keys = [prefix + k for k in sd]
            flat = torch.cat([t.reshape(-1).view(torch.uint8) for t in sd.values()]).numpy()
            offsets, at = [], 0
            for t in sd.values():
                offsets.append(at)
                at += t.numel() * t.element_size()
            base = raw.buf.ctypes.data
            raw.buf[:] = flat
            sizes = [t.numel() * t.element_size() for t in sd.values()]
            ptrs = [base + o for o in offsets]
            assert all(r == 0 for r in raw.store.batch_put_from(keys, ptrs, sizes))

            def once():
                if args.row == "raw_save":
                    assert all(r == 0 for r in raw.store.batch_put_from(keys, ptrs, sizes))
                    return
                got = raw.store.batch_get_into(keys, ptrs, sizes)
                assert all(g == s for g, s in zip(got, sizes)), got
        else:
            c = create_remote_connector("mooncake:///" + prefix + "model")
            c.save_state_dict(sd)
            dest = {n: torch.empty_like(t) for n, t in sd.items()}
            batch = args.batch_mib << 20

            def once():
                if args.row == "save":
                    c.save_state_dict(sd)
                elif args.row == "load_into":
                    c.load_into(dest, batch_bytes=batch)
                elif args.row == "load_state_dict":
                    c.load_state_dict(batch_bytes=batch)
                else:
                    for _ in c.weight_iterator(batch_bytes=batch):
                        pass
        data = Path("build") / f"perf_{args.mode}_{args.row}.data"
        data.parent.mkdir(exist_ok=True)
        loads, elapsed = 0, 0.0
        if args.row == "first_load":  # one load in a new process, profiled from its start
            child = subprocess.run([sys.executable, __file__, "--first-load-child", "mooncake:///" + prefix + "model",
                                    str(data.resolve())], capture_output=True, text=True, timeout=600)
            if child.returncode != 0:
                sys.exit(f"profile_load: the first load failed: {child.stderr[-2000:]}")
            loads, elapsed = 1, float(child.stdout.split()[-1])
        else:
            between()
            once()  # warm: connections, leases
            rec = record(perf, data)
            while elapsed < args.seconds:
                between()  # untimed, but profiled (a removal on the master: little here)
                start = time.perf_counter()
                once()
                elapsed += time.perf_counter() - start
                loads += 1
            rec.send_signal(signal.SIGINT)
            rec.wait()
        sweeper.close()
    report = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
                             "--sort", "dso,sym", "--percent-limit", "0.5"],
                            capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in report.splitlines() if ln.strip() and not ln.startswith("#")][:args.top]
    head = (f"# python bench/profile_load.py --mode {args.mode} --row {args.row} --case {args.case} --batch-mib {args.batch_mib}: "
            f"{loads} loads of "
            f"{size / 2**20:.0f} MiB in {elapsed:.1f} s = {loads * size / elapsed / 2**30:.2f} GiB/s "
            f"(perf attached: {os.cpu_count()} cores)\n# self time by shared object and symbol\n")
    text = head + "\n".join(lines) + "\n"
    print(text)
    suffix = "" if args.case == "llama" else "_" + args.case
    out = Path("bench/results") / f"profile_{args.mode}_{args.row}{suffix}.txt"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
