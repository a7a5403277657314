"""Model saves and loads across processes against a real Mooncake: a saver
killed mid-way, two ranks saved and loaded by two processes at once, and the
mooncake-connector CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_bit_exact, clear_mooncake
from model_fixtures import generated_state_dict, write_hf_directory
from model_worker import digests, rank_state_dict
from mooncake_connector import FailedPreconditionError, create_remote_connector

WORKER = str(Path(__file__).with_name("model_worker.py"))


@pytest.fixture
def cluster(mooncake_cluster):
    clear_mooncake()
    return mooncake_cluster


def worker(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)


def test_killed_save_is_not_complete_and_resumes(cluster):
    url = "mooncake:///org/killed"
    n, kib = 40, 256
    saver = worker("save", url, 0, 1, n, kib, kib)  # one tensor per batch
    total = n * kib * 1024
    try:
        for line in saver.stdout:
            if line.startswith("progress") and int(line.split()[1]) >= total // 4:
                os.killpg(saver.pid, signal.SIGKILL)
                break
    finally:
        saver.kill()
        saver.wait(timeout=30)
    with create_remote_connector(url) as c:
        info = c.inspect_model()
        assert not info["complete"] and info["has_manifest"]
        assert any("not complete" in p for p in info["problems"])
        with pytest.raises(FailedPreconditionError, match="not complete"):
            c.load_state_dict()
        seen = []
        sd = rank_state_dict(0, n, kib)
        c.save_state_dict(sd, batch_bytes=kib * 1024, progress=lambda d, t: seen.append(d))
        # The resumed save skipped what the killed one had stored.
        assert seen[0] >= total // 4
        assert c.inspect_model()["complete"]
        assert digests(c.load_state_dict()) == digests(sd)
        assert c.verify_model()["problems"] == []


def test_two_ranks_saved_and_loaded_by_two_processes_at_once(cluster):
    url = "mooncake:///org/tp2"
    savers = [worker("save", url, r, 2, 12, 200, 1024) for r in (0, 1)]
    for s in savers:
        out, _ = s.communicate(timeout=120)
        assert s.returncode == 0 and out.rstrip().endswith("saved"), out[-500:]
    with create_remote_connector(url) as c:
        info = c.inspect_model()
    assert info["complete"] and info["ranks"] == [0, 1] and info["world_size"] == 2
    loaders = [worker("load", url, r) for r in (0, 1)]
    for r, p in enumerate(loaders):
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out[-500:]
        assert json.loads(out) == digests(rank_state_dict(r, 12, 200))


def cli(*args: str, input_bytes: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mooncake_connector.cli", *args], capture_output=True,
                          input=input_bytes, timeout=120, env=None if env is None else {**os.environ, **env})


def test_cli_writes_outlive_it_with_a_segment_in_its_environment(cluster, tmp_path):
    """SGLang's docs have users export MOONCAKE_GLOBAL_SEGMENT_SIZE for their
    engines; a CLI run in that shell must not keep what it stores in its own
    memory (Mooncake placed it there, and it was gone when the CLI exited)."""
    sd = generated_state_dict(seed=4, small=10)
    root = write_hf_directory(tmp_path / "hf", sd)
    url = "mooncake:///cli/segment-model"
    env = {"MOONCAKE_GLOBAL_SEGMENT_SIZE": "256mb"}
    r = cli("save", str(root), url, env=env)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    blob = os.urandom(5000)
    assert cli("put", "mooncake:///cli/segment-blob", "-", input_bytes=blob, env=env).returncode == 0
    # Read back by this process, after the CLI has exited.
    with create_remote_connector(url) as c:
        loaded = c.load_state_dict()
        assert sorted(loaded) == sorted(sd)
        for name, t in sd.items():
            assert_bit_exact(loaded[name], t)
        assert c.getbytes("cli/segment-blob") == blob


def test_cli_model_commands_and_exit_codes(cluster, tmp_path):
    sd = generated_state_dict(seed=9, small=20)
    root = write_hf_directory(tmp_path / "hf", sd)
    url = "mooncake:///cli/model"
    r = cli("save", str(root), url, "--json")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    saved = json.loads(r.stdout)
    assert saved["model"] == "cli/model" and saved["tensors"] == 24 and saved["files"] == 6
    assert saved["written_bytes"] == saved["bytes"]
    # Saved again unchanged: nothing moves, and the rate does not pretend otherwise.
    r = cli("save", str(root), url)
    assert r.returncode == 0 and b"0 bytes to send (all already stored" in r.stdout, r.stdout

    r = cli("ls", "--json")
    assert r.returncode == 0
    # Mooncake's own log lines go to a file unless -v asks for them.
    assert r.stderr == b"", r.stderr.decode()[-2000:]
    assert b"Transfer Engine" in cli("ls", "-v").stderr
    [row] = json.loads(r.stdout)
    assert row["name"] == "cli/model" and row["status"] == "complete" and row["bytes"] == saved["bytes"]
    assert b"cli/model" in cli("ls").stdout

    r = cli("inspect", url, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["complete"]
    r = cli("load", url, "--json")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    loaded = json.loads(r.stdout)
    assert loaded["bytes"] == sum(t.numel() * t.element_size() for t in sd.values())
    assert loaded["gb_per_s"] > 0 and loaded["verified"] and loaded["tensors"] == 24
    assert b"GB/s" in cli("load", url, "--no-verify").stdout

    assert cli("verify", url).returncode == 0
    with create_remote_connector("mooncake://") as c:
        key = "cli/model/keys/rank_0/embed_tokens.weight"
        t = c.get(key)
        t.view(torch.uint8).reshape(-1)[0] ^= 1
        c.set(key, t)
    r = cli("verify", url, "--json")
    assert r.returncode == 4 and "embed_tokens.weight" in " ".join(json.loads(r.stdout)["problems"])
    assert cli("load", url).returncode == 4

    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(3000))
    r = cli("put", "mooncake:///cli/blob", str(src))
    assert r.returncode == 0 and b"(pin hard: never evicted" in r.stdout, r.stdout
    r = cli("put", "mooncake:///cli/unpinned", str(src), "--pin", "none", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["pin"] == "none"
    r = cli("get", "mooncake:///cli/blob")
    assert r.returncode == 0 and r.stdout == src.read_bytes()
    assert cli("put", "mooncake:///cli/stdin", "-", input_bytes=b"from stdin").returncode == 0
    assert cli("get", "mooncake:///cli/stdin").stdout == b"from stdin"
    assert cli("get", "mooncake:///cli/missing").returncode == 3

    assert cli("rm", url).returncode == 0
    assert cli("rm", url).returncode == 3
    assert cli("inspect", url).returncode == 3
    assert cli("rm", "mooncake:///cli/blob").returncode == 0  # not a model: the key
    assert cli("get", "mooncake:///cli/blob").returncode == 3
    assert cli("save", str(tmp_path / "nowhere"), url).returncode == 3
    assert cli("load").returncode == 2
    # Bad usage the parser cannot see is exit 2 too: a name the layout reserves, a bad URL.
    assert cli("inspect", "mooncake:///cli/files/x").returncode == 2
    assert cli("ls", "mooncake://host-without-port/m").returncode == 2
    # A model SGLang saved (no manifest) loads unverified, and says so.
    with create_remote_connector("mooncake://") as c:
        c.set("cli/sglang-made/keys/rank_0/w", torch.ones(3))
    with create_remote_connector("mooncake:///cli/esc") as c:
        # A manifest whose strings hold a terminal escape, stored by hand.
        c.save_state_dict({"w": torch.ones(1)})
        manifest = json.loads(c.getstr("cli/esc/manifest/rank_0.json"))
        manifest["tool"] = "\x1b]0;owned\x07"
        c.setstr("cli/esc/manifest/rank_0.json", json.dumps(manifest))
    r = cli("load", "mooncake:///cli/sglang-made", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["verified"] is False
    assert b"not verified (no manifest)" in cli("load", "mooncake:///cli/sglang-made").stdout
    shown = cli("inspect", "mooncake:///cli/esc").stdout
    assert b"\x1b" not in shown and b"\\x1b]0;owned\\x07" in shown, shown
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("mooncake-connector 0.1.0 (Mooncake: ")
    assert "0.3.13.post1" in r.stdout.decode()


def test_cli_unreachable_master_is_exit_5(cluster):
    r = cli("ls", "mooncake://127.0.0.1:9/?connect_timeout=2s")
    assert r.returncode == 5, (r.returncode, r.stderr.decode()[-1000:])


def test_commands_without_tensors_do_not_import_torch():
    """ls, inspect, verify, rm, put and get start without torch (1.5-2.5 s to import)."""
    code = ("import sys; from mooncake_connector import cli, create_remote_connector; "
            "c = create_remote_connector('memory://t'); c.setstr('k', 'v'); c.list_models(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
