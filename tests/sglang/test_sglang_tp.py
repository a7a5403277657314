"""A model folder stored once with our CLI serves SGLang at any
tensor-parallel degree, through SGLang's real loaders on the CPU (gloo),
one process per rank (tp_worker.py): each rank's parameters after
SGLang's remote load of ``mooncake:///NAME`` equal, bit for bit, those of
SGLang's own disk loader reading the same folder at the same degree. At
TP > 1 the ranks load cooperatively (each fetches a share, the TP group
exchanges them). An engine-layout model (SGLang's own save_model) still
loads at its degree and is a clear error at another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mooncake_connector import create_remote_connector, standalone
from tiny_models import write_model

pytestmark = pytest.mark.usefixtures("mooncake_cluster")

WORKER = str(Path(__file__).with_name("tp_worker.py"))
CLI = str(Path(sys.executable).with_name("mooncake-connector"))


def run_ranks(mode: str, folder: Path, url: str, world: int, timeout: float = 300,
              env: dict | None = None) -> list[dict]:
    port = standalone.free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, mode, str(folder), url, str(r), str(world), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=None if env is None else {**os.environ, **env})
             for r in range(world)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        assert lines, f"a rank printed nothing; its stderr ends with:\n{err[-3000:]}"
        results.append(json.loads(lines[-1]))
    return results


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Each tiny model written as a folder and stored with `mooncake-connector save`."""
    models = {}
    for kind in ("llama", "llama-tied", "mixtral", "llama-fp8"):
        folder = write_model(tmp_path_factory.mktemp(kind) / kind, kind)
        url = f"mooncake:///tp-test/{kind}-{uuid.uuid4().hex[:6]}"
        cli("save", str(folder), url)
        models[kind] = (folder, url)
    return models


def stored_bytes(url: str) -> tuple[int, int]:
    """(the model's tensor bytes, its largest tensor's) from the manifest."""
    with create_remote_connector(url) as c:
        sizes = [t.numel() * t.element_size() for _, t in c.weight_iterator()]
    return sum(sizes), max(sizes)


@pytest.mark.parametrize("kind,world,split", [("llama", 1, False), ("llama", 2, False), ("llama-tied", 1, False),
                                              ("llama-tied", 2, False), ("llama-tied", 2, True),
                                              ("mixtral", 1, False), ("mixtral", 2, False), ("mixtral", 2, True),
                                              ("mixtral", 4, False), ("llama-fp8", 1, False),
                                              ("llama-fp8", 2, False)])
def test_checkpoint_model_loads_bit_exact_at_any_degree(stored, kind, world, split):
    folder, url = stored[kind]
    # split: batches of 64 KiB and pieces as small as 4 KiB, so that these
    # tiny models' larger tensors are split by rows between the ranks (as a
    # real model's tensors larger than a batch's share are).
    results = run_ranks("load", folder, url, world,
                        env={"MOONCAKE_CHUNK_SIZE": "4096", "MOONCAKE_CONNECTOR_BATCH_BYTES": "65536"} if split else None)
    total, largest = stored_bytes(url)
    fetched = 0
    for r in results:
        assert "error" not in r, r.get("trace", r)
        assert r["loader"] == "RemoteModelLoader"
        assert r["params"] > 0 and r["mismatched"] == [] and r["extra"] == []
        if world == 1:
            assert r["stats"] == {}  # one process: no group, a plain load
            continue
        s = r["stats"]
        assert s["world"] == world and s["total_bytes"] == total
        assert s["fetched_bytes"] <= total / world + largest, s
        assert s["fetched_bytes"] + s["received_bytes"] >= total
        assert (s["split_tensors"] > 0) == split, s
        fetched += s["fetched_bytes"]
    if world > 1:
        assert fetched == total  # each byte left the store once for the whole group
        # Sharded for real: the ranks' fused q/k/v parameters are parts of TP 1's.
        assert results[0]["shapes"]["model.layers.0.self_attn.qkv_proj.weight"][0] < 128


def test_ls_and_inspect_show_layout_and_degrees(stored):
    _, url = stored["llama"]
    info = json.loads(cli("inspect", url, "--json").stdout)
    assert info["layout"] == "checkpoint" and info["serves_tp"] == "any"
    rows = {r["name"]: r for r in json.loads(cli("ls", "--json").stdout)}
    assert rows[url.split(":///", 1)[1]]["serves_tp"] == "any"
    text = cli("inspect", url).stdout
    assert "layout     checkpoint: serves tensor-parallel degree any" in text


def test_engine_layout_loads_at_its_degree_and_nowhere_else(stored):
    """Saved by SGLang's own save_model at TP 2, in engine processes that
    contribute a Mooncake segment (as SGLang's docs configure them): what
    they stored must outlive the connector save_model closes."""
    folder, _ = stored["llama"]
    url = f"mooncake:///tp-test/engine-{uuid.uuid4().hex[:6]}"
    for r in run_ranks("save-engine", folder, url, 2, env={"MOONCAKE_GLOBAL_SEGMENT_SIZE": "256mb"}):
        assert "error" not in r, r.get("trace", r)
    info = json.loads(cli("inspect", url, "--json").stdout)
    assert info["layout"] == "engine" and info["serves_tp"] == "2" and info["ranks"] == [0, 1]
    for r in run_ranks("load", folder, url, 2):
        assert "error" not in r, r.get("trace", r)
        assert r["mismatched"] == [] and r["extra"] == []
        # The plugin filled each rank's own parameters in place.
        assert 0 < r["stats"]["filled_in_place"] <= r["params"], r["stats"]
    [r] = run_ranks("load", folder, url, 1)
    assert r.get("error") == "InvalidArgumentError", r
    assert "tensor-parallel degree 2" in r["message"] and "at degree 1" in r["message"]


def test_a_lost_tensor_fails_every_rank_naming_it(stored, tmp_path):
    folder = write_model(tmp_path / "lost", "llama", seed=3)
    name = f"tp-test/lost-{uuid.uuid4().hex[:6]}"
    cli("save", str(folder), f"mooncake:///{name}")
    with create_remote_connector("mooncake://") as c:
        assert c.remove(f"{name}/keys/rank_0/model.layers.1.mlp.up_proj.weight")
    for r in run_ranks("load", folder, f"mooncake:///{name}", 2):
        assert r.get("error") == "DataLossError", r
        assert "model.layers.1.mlp.up_proj.weight" in r["message"]
