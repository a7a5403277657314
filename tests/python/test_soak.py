"""Bounded soak with faults: several processes save, load, overwrite and
remove models and plain keys on mooncake:// (two storage processes,
replica_num=2) while storage processes and the master are killed and
restarted at random moments. Every completed load must be bit-exact one
whole save, every failure one of the clear errors, nothing may hang, and
after the faults the store must work again. SOAK_SECONDS sets the length
(default 60; `make soak` runs an hour). The figures go to build/soak_report.json."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import soak_worker
from conftest import export
from faults import kill, restart, until_works
from mooncake_connector import create_remote_connector, standalone

SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
WORKERS = 3
STORAGE = 2


@pytest.fixture
def instance(tmp_path, monkeypatch):
    with standalone.start(segment_size="256mb", local_buffer_size="32mb", lease_ttl_ms=500,
                          log_dir=str(tmp_path / "logs"), storage_processes=STORAGE) as inst:
        export(monkeypatch, inst)
        yield inst


def inject_faults(inst: standalone.StandaloneInstance, seconds: float, rng: random.Random) -> dict:
    """Kills and restarts processes at random moments for `seconds`."""
    faults = {"storage_restart": 0, "master_restart": 0}
    end = time.monotonic() + seconds
    while time.monotonic() + 15 < end:  # the last fault has time to heal
        time.sleep(rng.uniform(4, 10))
        if rng.random() < 0.7:
            which = rng.randrange(1, STORAGE + 1)
            kill(inst, which)
            time.sleep(rng.uniform(0.5, 3))
            restart(inst, which)
            faults["storage_restart"] += 1
        else:
            kill(inst, 0)
            time.sleep(rng.uniform(0.5, 2))
            restart(inst, 0)
            faults["master_restart"] += 1
    return faults


def test_soak_with_faults(instance, tmp_path):
    url = f"mooncake://{instance.master_address}/{{}}?replica_num=2&op_timeout=30s"
    # Each worker's stderr (Mooncake's log lines, and a traceback if it dies)
    # goes to a file, shown if the worker fails.
    errs = [tmp_path / f"worker{w}.stderr" for w in range(WORKERS)]
    procs = []
    for w, err in enumerate(errs):
        with err.open("w") as sink:
            procs.append(subprocess.Popen([sys.executable, soak_worker.__file__, url, str(SECONDS), str(w),
                                           str(WORKERS)], stdout=subprocess.PIPE, stderr=sink, text=True,
                                          env=os.environ.copy()))
    faults = inject_faults(instance, SECONDS, random.Random(int(os.environ.get("SOAK_SEED", "1"))))
    results = []
    for p, err in zip(procs, errs):
        # An operation may take up to op_timeout; more than that is a hang.
        out, _ = p.communicate(timeout=SECONDS + 120)
        assert p.returncode == 0, (out, err.read_text(errors="replace")[-3000:])
        results.append(json.loads(out.strip().splitlines()[-1]))

    # After the faults the store serves again, and a new save loads bit-exact.
    sd = soak_worker.model_version(99, 1)
    with create_remote_connector(url.format("soak/final")) as c:
        _, recovered_in = until_works(lambda: c.save_state_dict(sd), 60)
        back = c.load_state_dict()
    assert all(torch.equal(back[k].view(torch.uint8), v.view(torch.uint8)) for k, v in sd.items())

    total: dict = {"seconds": SECONDS, "workers": WORKERS, "faults": faults,
                   "recovered_in_s": round(recovered_in, 1), "clear_errors": {}, "examples": []}
    for r in results:
        for k, v in r.items():
            if k == "clear_errors":
                for kind, n in v.items():
                    total["clear_errors"][kind] = total["clear_errors"].get(kind, 0) + n
            elif k == "examples":
                total["examples"] += v
            else:
                total[k] = total.get(k, 0) + v
    total["operations"] = sum(total[k] for k in ("model_save", "model_load", "model_remove", "set", "get",
                                                  "remove"))
    report = Path(os.environ.get("SOAK_REPORT", "build/soak_report.json"))
    report.parent.mkdir(exist_ok=True)
    report.write_text(json.dumps(total, indent=1))
    print(json.dumps(total))
    assert total["wrong"] == 0, total
    assert total["unclear"] == 0, total
    assert sum(faults.values()) >= max(1, int(SECONDS // 20)), total
    assert total["model_load"] > 0 and total["model_save"] > 0 and total["get"] > 0, total
