"""mooncake:// against a real Mooncake master and storage process: interop
with the raw wheel in a separate process, values larger than the local buffer
and than one chunk, overwrite, list under concurrent writers, standalone-client
mode, pure clients, bounded failure on an unreachable master, the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import safetensors.torch
import torch

from conftest import LEASE_TTL_MS, assert_bit_exact, clear_mooncake, export, random_tensor
from faults import fill_pool
from mooncake_connector import (
    DataLossError,
    InvalidArgumentError,
    UnavailableError,
    create_remote_connector,
    standalone,
)

pytestmark = pytest.mark.usefixtures("mooncake_cluster")

# A separate process that talks to the cluster with the raw wheel only.
RAW_CLIENT = r"""
import json, os, sys
from mooncake.store import MooncakeDistributedStore
import safetensors.torch, torch
s = MooncakeDistributedStore()
rc = s.setup(os.environ["MOONCAKE_LOCAL_HOSTNAME"], os.environ["MOONCAKE_TE_META_DATA_SERVER"],
             0, 64 << 20, "tcp", "", os.environ["MOONCAKE_MASTER"])
assert rc == 0, rc
cmd, key = sys.argv[1], sys.argv[2]
if cmd == "put":
    t = torch.arange(int(sys.argv[3]), dtype=torch.float32).reshape(-1, 4).to(torch.bfloat16)
    rc = s.put(key, safetensors.torch.save({"tensor_bytes": t}))
    print(json.dumps({"rc": rc}))
elif cmd == "get":
    blob = s.get(key)
    t = safetensors.torch.load(blob)["tensor_bytes"]
    print(json.dumps({"dtype": str(t.dtype), "shape": list(t.shape),
                      "sum": float(t.double().sum()), "first": float(t.reshape(-1)[0])}))
elif cmd == "getstr":
    print(json.dumps({"text": s.get(key).decode("utf-8")}))
s.close()
"""


def raw_client(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", RAW_CLIENT, *args], capture_output=True,
                         text=True, timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def mc():
    clear_mooncake()
    with create_remote_connector("mooncake://", device="cpu") as c:
        yield c


def all_raw_keys(inst) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{inst.metrics_port}/get_all_keys") as r:
        return [k for k in r.read().decode().split("\n") if k]


def test_seed_example_over_mooncake(mc):
    tensor = torch.randn(1024, 1024)
    mc.set("my_model_weight", tensor)
    assert torch.allclose(tensor, mc.get("my_model_weight"))
    mc.setstr("config_json", '{"hidden_size": 1024}')
    assert mc.getstr("config_json") == '{"hidden_size": 1024}'


def test_raw_wheel_blob_reads_through_us(mc):
    assert raw_client("put", "from-raw", "48")["rc"] == 0
    t = mc.get("from-raw")
    expected = torch.arange(48, dtype=torch.float32).reshape(-1, 4).to(torch.bfloat16)
    assert_bit_exact(t, expected)


def test_our_value_reads_through_raw_wheel(mc):
    t = random_tensor(torch.float16, (33, 7), seed=3).nan_to_num(0.0).clamp(-100, 100)
    mc.set("from-us", t)
    got = raw_client("get", "from-us")
    assert got["dtype"] == "torch.float16" and got["shape"] == [33, 7]
    assert got["sum"] == pytest.approx(float(t.double().sum()))
    mc.setstr("text-from-us", "héllo ✓")
    assert raw_client("getstr", "text-from-us")["text"] == "héllo ✓"


def test_value_larger_than_local_buffer_and_chunks(mc, mooncake_cluster):
    # 320 MB: 5x the 64 MB local buffer; with its safetensors header the value
    # is just over 20 chunks of 16 MB, so 21.
    big = random_tensor(torch.uint8, (320 << 20,), seed=7).view(torch.bfloat16).reshape(-1, 4096)
    mc.set("big", big)
    assert_bit_exact(mc.get("big"), big)
    assert mc.list("") == ["big"]
    # Only this test's keys: chunks of values earlier tests removed may still
    # wait for their read leases to expire (their client retries the removal).
    def ours() -> list[str]:
        return [k for k in all_raw_keys(mooncake_cluster) if k.split("\x1f", 1)[0] in ("big", "other")]

    chunk_keys = [k for k in ours() if "\x1f" in k]
    assert len(chunk_keys) == 21
    # Overwriting with a small value removes every old chunk once the read
    # leases on them expire (the next write of this client retries them); the
    # small value itself, as an overwrite, is one chunk behind a header.
    small = torch.ones(3)
    mc.set("big", small)
    assert_bit_exact(mc.get("big"), small)
    time.sleep(LEASE_TTL_MS / 1000 + 0.3)
    mc.setstr("other", "x")
    assert len([k for k in ours() if "\x1f" in k]) == 1
    mc.remove("big")
    mc.remove("other")
    assert ours() == []


def test_calls_of_many_objects_stay_within_mooncakes_tcp_queue(mc, capfd):
    # Over TCP every object of a batch call is one transfer, and Mooncake
    # queues at most 1,024 per peer (MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER)
    # and fails the rest ("TCP lane queue-full rejection"). Calls of 3,072
    # chunks of 64 KiB (one direct call's worth of bytes) failed the save;
    # calls of 3,000 small tensors (one staged call's worth of slot space)
    # were refused again on every retry until the deadline. Both are saved
    # and read back here without a transfer refused.
    chunked = {f"w{i}": random_tensor(torch.bfloat16, (8192, 4096), seed=i) for i in range(3)}
    small = {f"n{i}": random_tensor(torch.bfloat16, (2048,), seed=i) for i in range(3000)}
    for url, state in (("mooncake:///org/small-chunks?chunk_size=64kb", chunked),
                       ("mooncake:///org/small-values", small)):
        with create_remote_connector(url, device="cpu") as c:
            c.save_state_dict(state)
            got = c.load_state_dict()
            for name, t in state.items():
                assert_bit_exact(got[name], t)
    err = capfd.readouterr().err
    assert "queue-full" not in err and "TRANSFER_FAIL" not in err, err[-2000:]


def test_foreign_single_object_above_chunk_size(mc):
    # 24M bf16 elements = 48 MB in one object, written by the raw wheel.
    assert raw_client("put", "big-raw", str(24 << 20))["rc"] == 0
    t = mc.get("big-raw")
    assert t.shape == (6 << 20, 4) and t.dtype == torch.bfloat16
    assert float(t[-1, -1]) == float(torch.tensor((24 << 20) - 1, dtype=torch.float32).to(torch.bfloat16))


def test_overwrite_keeps_last_value(mc):
    for i in range(5):
        mc.set("w", torch.full((i + 1,), float(i)))
        assert mc.get("w").tolist() == [float(i)] * (i + 1)
    mc.setstr("w", "now text")
    assert mc.getstr("w") == "now text"


def test_list_with_concurrent_writers(mc):
    writers, per_writer = 4, 25
    done: set[str] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            with create_remote_connector("mooncake://") as c:
                for i in range(per_writer):
                    key = f"cw/{w}/{i:03d}"
                    c.setstr(key, key)
                    with lock:
                        done.add(key)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        with lock:
            finished_before = set(done)
        listed = mc.list("cw/")
        assert listed == sorted(listed)
        assert finished_before <= set(listed)  # every completed write is listed
    for t in threads:
        t.join()
    assert not errors, errors
    assert mc.list("cw/") == sorted(done)
    assert len(done) == writers * per_writer


def test_client_mode_against_mooncake_client(mooncake_cluster, monkeypatch):
    monkeypatch.setenv("MOONCAKE_CLIENT", mooncake_cluster.client_address)
    monkeypatch.delenv("MOONCAKE_MASTER")
    with create_remote_connector("mooncake://", device="cpu") as c:
        t = random_tensor(torch.float32, (256, 256), seed=11)
        c.set("via-client", t)
        assert_bit_exact(c.get("via-client"), t)
        big = random_tensor(torch.uint8, (40 << 20,), seed=12)  # chunked
        c.set("via-client-big", big)
        assert_bit_exact(c.get("via-client-big"), big)
        with pytest.raises(RuntimeError, match="MOONCAKE_MASTER"):
            c.list("")  # listing asks the master, which is not configured here
    # A full client sees what the standalone client wrote.
    monkeypatch.setenv("MOONCAKE_MASTER", mooncake_cluster.master_address)
    with create_remote_connector("mooncake://") as c:
        assert_bit_exact(c.get("via-client"), t)
        c.remove("via-client")
        c.remove("via-client-big")


def test_options_and_url_master(mooncake_cluster):
    url = f"mooncake://{mooncake_cluster.master_address}/my-model?replica_num=1&pin=hard"
    with create_remote_connector(url, chunk_size="1mb") as c:
        assert c.model_name == "my-model"
        t = random_tensor(torch.int32, (1 << 20,), seed=5)  # 4 MB: 4 chunks of 1 MB
        c.set("pinned", t)
        assert_bit_exact(c.get("pinned"), t)
        c.remove("pinned")
    with pytest.raises(InvalidArgumentError, match="pin"):
        create_remote_connector("mooncake://", pin="sometimes")
    with pytest.raises(InvalidArgumentError, match="colour"):
        create_remote_connector("mooncake://", colour="red")


def test_missing_configuration_names_the_variable(monkeypatch):
    monkeypatch.delenv("MOONCAKE_MASTER")
    monkeypatch.delenv("MOONCAKE_CLIENT", raising=False)
    with pytest.raises(ValueError) as info:
        create_remote_connector("mooncake://")
    assert "MOONCAKE_MASTER" in str(info.value)
    assert "mooncake-connector standalone" in str(info.value)


def test_unreachable_master_fails_fast_naming_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    start = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        create_remote_connector(f"mooncake://127.0.0.1:{port}", connect_timeout="500ms")
    assert time.monotonic() - start < 5
    assert f"127.0.0.1:{port}" in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_cli_standalone_serves_and_stops_on_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mooncake_connector.cli", "standalone", "--segment-size", "256mb",
         "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    env = {}
    sockets = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if " listens on " in line:
                sockets.append(line)
            if line.startswith("export "):
                k, v = line[len("export "):].strip().split("=", 1)
                env[k] = v
            if "Ctrl-C" in line:
                break
        assert "MOONCAKE_MASTER" in env, proc.stderr.read() if proc.poll() is not None else env
        # The printed environment works for a new pure client in another process.
        code = ("import torch; from mooncake_connector import create_remote_connector as c;"
                "x = c('mooncake://'); x.set('cli', torch.ones(2)); print(x.get('cli').tolist())")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, env={**os.environ, **env})
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().endswith("[1.0, 1.0]")
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "stopped; the 1 key(s) it held are gone" in rest
    # Every socket is on loopback but those Mooncake binds to all interfaces
    # regardless, each named with the reason: of the master only the HTTP
    # metadata server.
    metadata_port = env["MOONCAKE_TE_META_DATA_SERVER"].rsplit(":", 1)[1].split("/")[0]
    for line in sockets:
        on_loopback = " listens on 127.0.0.1:" in line
        assert on_loopback != ("(all interfaces: " in line), line
        if line.startswith("# mooncake_master") and not on_loopback:
            assert f":{metadata_port} (all interfaces: the master's HTTP metadata server" in line, line
    assert sum("mooncake_master" in line for line in sockets) == 3, sockets
    master_port = int(env["MOONCAKE_MASTER"].rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", master_port)) != 0  # the master is gone


def test_hard_pinned_values_survive_eviction(tmp_path, monkeypatch):
    """Fill a small dedicated cluster far past its memory: the unpinned copy of
    a weight is evicted, the hard-pinned one is still there, bit-exact."""
    w = random_tensor(torch.float32, (8 << 20,), seed=21)  # 32 MB
    with standalone.start(segment_size="256mb", log_dir=str(tmp_path)) as inst:
        export(monkeypatch, inst)
        with create_remote_connector("mooncake://", pin="hard") as c:
            c.set("weights/pinned", w)
        with create_remote_connector("mooncake://") as c:
            c.set("weights/unpinned", w)
            # 480 MB went into 256 MB, and what was written is no longer all
            # there: eviction really happened.
            assert fill_pool(c, 30) == 30
            assert sum(readable(c, f"filler/{i}") for i in range(30)) < 30
            assert not readable(c, "weights/unpinned")
            assert_bit_exact(c.get("weights/pinned"), w)


def readable(c, key: str) -> bool:
    """True if `key` reads whole; an evicted value reads as missing, or as
    DataLoss when only some of its chunks were evicted."""
    try:
        return c.getbytes(key) is not None
    except DataLossError:
        return False


def test_master_dying_after_connect_fails_fast_naming_it(tmp_path, monkeypatch):
    """No hang when the master goes away under an open connector: every call
    raises UnavailableError (a ConnectionError) naming the master, in bounded
    time (Mooncake's own RPC retry is about 4 s)."""
    with standalone.start(segment_size="128mb", log_dir=str(tmp_path)) as inst:
        export(monkeypatch, inst)
        c = create_remote_connector("mooncake://")
        c.set("k", torch.ones(4))
        master = inst.processes[0]
        master.send_signal(signal.SIGKILL)
        master.wait()
        calls = {"get": lambda: c.get("k"), "set": lambda: c.set("k2", torch.ones(2)),
                 "exists": lambda: c.exists("k"), "list": lambda: c.list("")}
        for name, call in calls.items():
            start = time.monotonic()
            with pytest.raises(UnavailableError) as info:
                call()
            assert time.monotonic() - start < 30, name
            assert isinstance(info.value, ConnectionError)
            if name != "list":
                assert inst.master_address in str(info.value), str(info.value)
        c.close()
