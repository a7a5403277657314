"""bench/sglang_path.py at a tiny size, one sample per row: every row runs
SGLang's real loader in a new process and checks what it loaded (and that
the engine rows took the path they name), so the benchmark behind the
recorded SGLang-path figures keeps working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "sglang_path.py"


def test_the_sglang_path_benchmark_runs_every_row_and_checks_it(tmp_path):
    out = tmp_path / "sglang_path.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONCAKE_")}
    env["GLOG_minloglevel"] = "3"
    run = subprocess.run([sys.executable, str(BENCH), "--tiny", "--samples", "1", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"engine in place", "engine copied", "checkpoint", "raw + copy", "disk"}
    for name, r in rows.items():
        assert len(r["samples"]) == 1
        # The weights are loaded inside load_model's clock.
        assert r["load_model"]["median"] >= r["weights"]["median"] > 0, (name, r)
    assert {t["target"] for t in result["targets"]} == {
        "engine in place vs raw + copy (weights)", "checkpoint vs raw + copy (weights)",
        "engine copied vs raw + copy (weights)"}
    assert "ratio of medians" in run.stdout
