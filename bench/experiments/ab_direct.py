"""Direct transfers against staging: MOONCAKE_DIRECT_TRANSFERS=0 and 1, for
the same saved model in one standalone instance. Two connectors in one process
(a Mooncake client each), alternating loads (medians of 5, each after a
warm-up); with --separate, each setting in processes of its own, one
connector each. Then new processes' first load_state_dict and first four
weight_iterator loads, alternating. Prints a table and writes JSON
(bench/results/ab_direct_<mode>[_separate].json unless --out)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from bench import llama_like, nbytes  # noqa: E402
from harness import write_result  # noqa: E402
from mooncake_connector import create_remote_connector, standalone  # noqa: E402

GiB = 1 << 30
URL = "mooncake:///ab/model"


def timed_loads(c, dest: dict, rounds: int, faults: dict[str, list[int]] | None = None) -> dict[str, list[float]]:
    """Seconds of each load kind, `rounds` times (after one warm-up of each);
    the page faults (minor: memory touched for the first time) of each into
    `faults` when given."""
    loads = {
        "weight_iterator": lambda: [None for _ in c.weight_iterator()],
        "load_state_dict": lambda: c.load_state_dict(),
        "load_into": lambda: c.load_into(dest),
    }
    out: dict[str, list[float]] = {row: [] for row in loads}
    for row, load in loads.items():
        load()
        for _ in range(rounds):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            load()
            out[row].append(time.perf_counter() - start)
            if faults is not None:
                faults.setdefault(row, []).append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return out


def separate_loads() -> None:
    """In a new process with this one connector: medians of timed_loads."""
    c = create_remote_connector(URL)
    dest = {name: torch.empty(shape, dtype=getattr(torch, dtype)) for name, dtype, shape in json.loads(sys.stdin.read())}
    faults: dict[str, list[int]] = {}
    seconds = {row: statistics.median(t) for row, t in timed_loads(c, dest, 5, faults).items()}
    print(json.dumps({"seconds": seconds, "faults": {row: statistics.median(f) for row, f in faults.items()}}))
    c.close()


def first_load(kind: str) -> None:
    """The first load of a new process (load_state_dict), or its first four
    weight_iterator loads, each copied into touched tensors the way a model
    loader fills its parameters (in standalone-client mode shared blocks are
    made after the second). Prints the seconds of each."""
    c = create_remote_connector(URL)
    c.exists("warm-up")
    times = []
    if kind == "weight_iterator":
        dest = {n: torch.zeros(shape, dtype=getattr(torch, dtype)) for n, dtype, shape in json.loads(sys.stdin.read())}
        for i in range(4):
            if i > 0:
                time.sleep(float(os.environ.get("AB_GAP_SECONDS", "0")))
            start = time.perf_counter()
            for name, tensor in c.weight_iterator():
                dest[name].copy_(tensor)
            times.append(time.perf_counter() - start)
    else:
        start = time.perf_counter()
        c.load_state_dict()
        times.append(time.perf_counter() - start)
    print(" ".join(str(t) for t in times))
    c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("tcp", "own", "client"), default="client")
    parser.add_argument("--full", action="store_true", help="bench.py's full-size model (1.09 GiB)")
    parser.add_argument("--first-loads", type=int, default=3, help="new-process first loads per setting")
    parser.add_argument("--out")
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds between a new process's weight_iterator loads (a loader's other work)")
    parser.add_argument("--separate", action="store_true",
                        help="each setting's loads in a process of its own (two rounds, alternating) instead of "
                             "two connectors in this one")
    parser.add_argument("--child", choices=("load_state_dict", "weight_iterator"), help=argparse.SUPPRESS)
    parser.add_argument("--child-loads", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        first_load(args.child)
        return
    if args.child_loads:
        separate_loads()
        return
    sd = llama_like(11, 2048, 16384) if args.full else llama_like(3, 1536, 8192)
    size = nbytes(sd)
    segment_mib = max(1024, (10 * size) >> 20)
    rows = []
    with standalone.start(segment_size=f"{segment_mib}mb", local_buffer_size="256mb", lease_ttl_ms=None,
                          storage_processes=0 if args.mode == "own" else 1) as inst:
        env = inst.env()
        if args.mode == "own":
            env["MOONCAKE_GLOBAL_SEGMENT_SIZE"] = f"{segment_mib}mb"
        if args.mode == "client":
            env["MOONCAKE_CLIENT"] = inst.client_address
        os.environ.update(env)
        times: dict[str, dict[str, list[float]]] = {"0": {}, "1": {}}
        faults: dict[str, dict[str, list[float]]] = {"0": {}, "1": {}}
        if args.separate:
            with create_remote_connector(URL) as c:
                c.save_state_dict(sd)
            spec = json.dumps([[n, str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in sd.items()])
            for _ in range(2):
                for d in ("0", "1"):
                    child = subprocess.run([sys.executable, __file__, "--child-loads"], input=spec, capture_output=True,
                                           text=True, env=dict(os.environ, MOONCAKE_DIRECT_TRANSFERS=d), timeout=600)
                    if child.returncode != 0:
                        sys.exit(f"ab_direct: loads failed: {child.stderr[-2000:]}")
                    got = json.loads(child.stdout.split("\n")[-2])
                    for row, t in got["seconds"].items():
                        times[d].setdefault(row, []).append(t)
                        faults[d].setdefault(row, []).append(got["faults"][row])
            conns = {}
        else:
            conns = {}
            for d in ("0", "1"):
                os.environ["MOONCAKE_DIRECT_TRANSFERS"] = d
                conns[d] = create_remote_connector(URL)
            conns["1"].save_state_dict(sd)
            dest = {n: torch.empty_like(t) for n, t in sd.items()}
            for _ in range(5):  # alternating, one load of each kind at a time
                for d in ("0", "1"):
                    for row, t in timed_loads(conns[d], dest, 1).items():
                        times[d].setdefault(row, []).extend(t)
        for row in times["0"]:
            staged, direct = (statistics.median(times[d][row]) for d in ("0", "1"))
            rows.append({"row": row, "staged_gib_s": size / staged / GiB, "direct_gib_s": size / direct / GiB,
                         "direct_vs_staged": staged / direct})
            if faults["0"]:  # each process's median page faults per load
                rows[-1].update(staged_page_faults=faults["0"][row], direct_page_faults=faults["1"][row])
        if args.mode != "own":  # another process would read the saving process's segment over TCP
            spec = json.dumps([[n, str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in sd.items()])
            for kind in ("load_state_dict", "weight_iterator"):
                firsts: dict[str, list[float]] = {"0": [], "1": []}
                for _ in range(args.first_loads):
                    for d in ("0", "1"):
                        child = subprocess.run([sys.executable, __file__, "--child", kind], input=spec,
                                               capture_output=True, text=True, timeout=600,
                                               env=dict(os.environ, MOONCAKE_DIRECT_TRANSFERS=d,
                                                        AB_GAP_SECONDS=str(args.gap)))
                        if child.returncode != 0:
                            sys.exit(f"ab_direct: a first load failed: {child.stderr[-2000:]}")
                        seconds = [float(x) for x in child.stdout.strip().split("\n")[-1].split()]
                        firsts[d].append([round(size / t / GiB, 2) for t in seconds])
                what = "first load_state_dict" if kind == "load_state_dict" else "weight_iterator loads 1-4"
                rows.append({"row": f"{what} of a new process (each)", "staged_gib_s": firsts["0"],
                             "direct_gib_s": firsts["1"]})
        for c in conns.values():
            c.close()
    print(f"\n{args.mode}, {size / GiB:.2f} GiB, " + ("a process per setting" if args.separate else
                                                        "two connectors in one process"))
    for r in rows:
        if "direct_vs_staged" in r:
            print(f"{r['row']:<30} staged {r['staged_gib_s']:6.2f} GiB/s  direct {r['direct_gib_s']:6.2f} GiB/s  "
                  f"direct/staged {r['direct_vs_staged']:.2f}" +
                  (f"  page faults staged {r['staged_page_faults']} direct {r['direct_page_faults']}"
                   if "staged_page_faults" in r else ""))
        else:
            print(f"{r['row']:<30} staged {r['staged_gib_s']} GiB/s  direct {r['direct_gib_s']} GiB/s")
    suffix = ("_separate" if args.separate else "") + (f"_gap{args.gap:g}" if args.gap else "")
    out = args.out or f"bench/results/ab_direct_{args.mode}{suffix}.json"
    huge = os.environ.get("MOONCAKE_CONNECTOR_HUGE_PAGES")
    command = (("" if huge is None else f"MOONCAKE_CONNECTOR_HUGE_PAGES={huge} ") +
               "python bench/experiments/ab_direct.py --mode " + args.mode + (" --full" if args.full else "") +
               (" --separate" if args.separate else "") + (f" --gap {args.gap:g}" if args.gap else "") +
               (f" --first-loads {args.first_loads}" if args.first_loads != 3 else "") +
               (f" --out {args.out}" if args.out else ""))
    write_result(out, "ab_direct", command, size=size, rows=rows, separate=args.separate)


if __name__ == "__main__":
    main()
