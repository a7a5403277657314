"""Cooperative loads against a real Mooncake: the processes of a gloo group
each fetch a disjoint share of a model and exchange the rest, and every one
ends with every tensor, bit for bit; a lost tensor or a dead process fails
every process with an error that says so, within a bounded time."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import clear_mooncake
from model_fixtures import generated_state_dict
from mooncake_connector import create_remote_connector, standalone

WORKER = str(Path(__file__).with_name("group_worker.py"))


@pytest.fixture
def cluster(mooncake_cluster):
    clear_mooncake()
    return mooncake_cluster


def digests(sd: dict[str, torch.Tensor]) -> dict:
    return {n: [str(t.dtype), list(t.shape),
                hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()]
            for n, t in sd.items()}


SHM_FILES = "/dev/shm/mooncake-connector-*"


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="no CUDA device visible to torch on this machine")


def run_group(url: str, world: int, *extra: object, timeout: float = 120, exchange: str = "auto") -> list[dict]:
    """exchange: auto, broadcast, or device (onto the GPU, shares exchanged
    in device memory: group_worker.py says how)."""
    port = standalone.free_port()
    env = {**os.environ, "MOONCAKE_CONNECTOR_EXCHANGE": "auto" if exchange == "device" else exchange,
           "GROUP_WORKER_DEVICE": "cuda" if exchange == "device" else "cpu"}
    procs = [subprocess.Popen([sys.executable, WORKER, url, str(r), str(world), str(port), *map(str, extra)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
             for r in range(world)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def saved_model(url: str) -> dict[str, torch.Tensor]:
    sd = generated_state_dict(small=40)
    sd["tied.weight"] = sd["embed_tokens.weight"]  # an alias: stored once, yielded twice
    with create_remote_connector(url) as c:
        c.save_state_dict(sd, layout="checkpoint")
    return sd


CHUNK = 64 << 10  # values above it are stored in chunks; pieces of split tensors are not smaller


@pytest.mark.parametrize("world,batch_kib,exchange", [(2, 256, "auto"), (3, 64 << 10, "auto"),
                                                      (2, 256, "broadcast"), (3, 64 << 10, "broadcast"),
                                                      pytest.param(2, 256, "device", marks=needs_gpu),
                                                      pytest.param(3, 64 << 10, "device", marks=needs_gpu)])
def test_every_process_gets_every_tensor_and_fetches_its_share(cluster, world, batch_kib, exchange,
                                                               monkeypatch):
    # Small chunks, so that this small model's larger tensors are split
    # between the processes (each reads a byte range of a stored value).
    monkeypatch.setenv("MOONCAKE_CHUNK_SIZE", str(CHUNK))
    url = "mooncake:///org/coop"
    sd = saved_model(url)
    with create_remote_connector(url) as c:
        order = [n for n, _ in c.weight_iterator()]
        entries = c.model_manifest(0)
        plan = c._model().reader(0, True, batch_kib * 1024, None).plan_shares(  # noqa: SLF001
            world, batch_kib * 1024, min_piece_bytes=CHUNK)
    planned = [0] * world
    for _, pieces in plan:
        for _, _, size, owner, _ in pieces:
            planned[owner] += size
    largest_piece = max(p[2] for _, pieces in plan for p in pieces)
    split = {p[0] for _, pieces in plan for p in pieces if not p[4]}
    assert split, "the plan splits the largest tensors"
    before = set(glob.glob(SHM_FILES))
    results = run_group(url, world, batch_kib * 1024, exchange=exchange)
    assert set(glob.glob(SHM_FILES)) <= before  # the shared-memory files are gone
    want = digests(sd)
    total = sum(t.numel() * t.element_size() for n, t in sd.items() if n != "tied.weight")
    assert entries["bytes"] == total
    fetched = 0
    for r in results:
        assert "error" not in r, r
        assert list(r["digests"]) == order  # the stored order on every process
        assert r["digests"] == want
        s = r["stats"]
        assert s["world"] == world and s["total_bytes"] == total
        assert s["exchange"] == ("shared memory" if exchange == "auto" else "broadcast")
        assert s["split_tensors"] == len(split)
        assert s["fetched_bytes"] == planned[s["group_rank"]], s
        assert s["fetched_bytes"] <= total / world + largest_piece, s
        fetched += s["fetched_bytes"]
        assert s["fetched_bytes"] + s["received_bytes"] >= total
    assert fetched == total  # disjoint shares that cover the model: each byte fetched once


@pytest.mark.parametrize("chunk", [None, CHUNK])
def test_a_lost_tensor_fails_every_process_naming_it(cluster, chunk, monkeypatch):
    if chunk:  # lm_head.weight is then split: a lost piece
        monkeypatch.setenv("MOONCAKE_CHUNK_SIZE", str(chunk))
    url = "mooncake:///org/coop-lost"
    saved_model(url)
    with create_remote_connector(url) as c:
        assert c.remove("org/coop-lost/keys/rank_0/lm_head.weight")
    start = time.monotonic()
    results = run_group(url, 2)
    assert time.monotonic() - start < 60
    for r in results:
        assert r.get("error") == "DataLossError", r
        assert "lm_head.weight" in r["message"]


def test_a_process_that_dies_fails_the_others(cluster):
    url = "mooncake:///org/coop-dead"
    saved_model(url)
    before = set(glob.glob(SHM_FILES))
    port = standalone.free_port()
    # Rank 1 stops after its first tensor of a load of many small batches
    # and is killed; rank 0 must fail, not wait for it.
    procs = [subprocess.Popen([sys.executable, WORKER, url, str(r), "2", str(port), str(64 << 10),
                               "1" if r == 1 else "-1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for r in range(2)]
    try:
        line = procs[1].stdout.readline()
        assert json.loads(line).get("paused"), line
        procs[1].kill()
        start = time.monotonic()
        out, _ = procs[0].communicate(timeout=90)
        elapsed = time.monotonic() - start
    finally:
        for p in procs:
            p.kill()
            p.wait()
    r0 = json.loads(out.strip().splitlines()[-1])
    assert r0.get("error") == "UnavailableError", r0
    assert "died or left" in r0["message"]
    assert elapsed < 60
    leftover = set(glob.glob(SHM_FILES)) - before
    for path in leftover:
        os.unlink(path)
    assert not leftover, "the failed load swept the killed process's shared-memory files too"


def test_cli_load_under_torchrun_is_cooperative(cluster, tmp_path):
    """`torchrun --nproc-per-node 2 -m mooncake_connector.cli load URL --json`:
    each process loads the whole model, fetches about half, and says so."""
    url = "mooncake:///org/coop-cli"
    sd = saved_model(url)
    total = sum(t.numel() * t.element_size() for n, t in sd.items() if n != "tied.weight")
    logs = tmp_path / "logs"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(standalone.free_port()), "--log-dir", str(logs), "--redirects", "3",
                        "-m", "mooncake_connector.cli", "load", url, "--json"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    outs = [json.loads(p.read_text()) for p in sorted(logs.rglob("stdout.log"))]
    assert len(outs) == 2
    assert sorted(o["group"]["group_rank"] for o in outs) == [0, 1]
    assert sum(o["group"]["fetched_bytes"] for o in outs) == total
    for o in outs:
        assert o["bytes"] == total and o["verified"] and o["group"]["world"] == 2
