"""The benchmark harness runs end to end (a tiny size, every deployment mode),
so that `make bench` cannot rot unnoticed: every row is measured, every
target is evaluated, and the JSON and charts are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"


def test_the_benchmark_runs_every_row_in_every_mode(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONCAKE_")}
    env["GLOG_minloglevel"] = "3"
    run = subprocess.run([sys.executable, str(BENCH), "--tiny", "--repeat", "1", "--small-ops", "20",
                          "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["mode"], r["case"], r["row"]) for r in result["rows"]}
    for mode in ("tcp", "own", "client"):
        for case in ("llama", "small"):
            for row in ("raw batch_get_into", "raw batch_put_from", "seed per-key get + load",
                        "ours load_into (preallocated)", "ours load_state_dict", "ours weight_iterator",
                        "ours weight_iterator (all kept)",
                        "ours get per key", "ours save_state_dict", "ours save_state_dict (overwrite)"):
                assert (mode, case, row) in rows, (mode, case, row)
        for op in ("ours setstr", "ours getstr", "raw put", "raw get", "raw get_size (missing key)",
                   "raw get_size + put"):
            assert (mode, "small-value", op) in rows
    for mode in ("tcp", "client"):
        for row in ("ours load_state_dict (first in a process)", "raw batch_get_into (first in a process)",
                    "ours load_state_dict (first, with setup)", "raw batch_get_into (first, with setup)"):
            assert (mode, "llama", row) in rows, (mode, row)
    by_row = {(r["mode"], r["row"]): r["seconds"] for r in result["rows"] if r["case"] == "llama"}
    for who in ("ours load_state_dict", "raw batch_get_into"):  # setup included: longer
        assert by_row[("tcp", f"{who} (first, with setup)")] > by_row[("tcp", f"{who} (first in a process)")]
    assert ("memory", "llama", "memcpy 2 threads into reused") in rows
    assert all(r["seconds"] > 0 for r in result["rows"] if "seconds" in r)
    assert result["targets"] and all(t["ratio"] == t["ratio"] for t in result["targets"])  # no NaN
    assert "target" in run.stdout and "vs raw" in run.stdout  # the table and the targets are printed
    for case in ("llama", "small"):
        assert (tmp_path / f"bench_{case}.png").stat().st_size > 1000


def test_the_tensor_parallel_benchmark_runs_every_row(tmp_path):
    out = tmp_path / "bench_tp.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONCAKE_")}
    env["GLOG_minloglevel"] = "3"
    run = subprocess.run([sys.executable, str(BENCH.parent / "bench_tp.py"), "--size-mib", "16", "--samples", "1",
                          "--vocab", "4096", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    text = json.dumps(result)
    for row in ("cooperative", "coop. whole", "share only", "every rank", "disk"):
        assert f'"{row}"' in text, row
    assert "target cooperative" in run.stdout


def test_the_cold_start_benchmark_loads_in_new_processes_and_checks_what_they_loaded(tmp_path):
    out = tmp_path / "cold_start.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONCAKE_")}
    env["GLOG_minloglevel"] = "3"
    run = subprocess.run([sys.executable, str(BENCH.parent / "cold_start.py"), "--tiny", "--samples", "1",
                          "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["mode"], r["row"]): r for r in result["rows"]}
    for mode in ("tcp", "own", "client"):
        for row in ("raw load", "raw load + copy", "ours load_into", "ours load_state_dict", "ours weight_iterator",
                    "raw save", "raw save + hash", "ours save_state_dict"):
            r = rows[(mode, row)]
            # Each clock starts earlier than the next one and stops at the same point.
            assert r["total"]["median"] > r["setup + load"]["median"] >= r["load"]["median"] > 0, (mode, row, r)
            assert len(r["samples"]) == 1
            assert 0 <= r["cpu"]["machine_busy"] <= 1 and r["cpu"]["user_s"] >= 0 and r["cpu"]["sys_s"] >= 0, r["cpu"]
    # Four targets and one reference (ours against the raw wheel doing the same work), each two ways.
    assert len(result["targets"]) == 3 * 5 * 2
    assert sum(t["counts"] for t in result["targets"]) == 3 * 4
    assert all(t["ratio"] > 0 for t in result["targets"])
    assert "target (ratio of medians" in run.stdout and "ours load_into vs raw load (setup + load)" in run.stdout
    assert "ours save_state_dict vs raw save (setup + load)" in run.stdout
    assert "ours save_state_dict vs raw save + hash (setup + load)" in run.stdout and "CPU during load" in run.stdout
