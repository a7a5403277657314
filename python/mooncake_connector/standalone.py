"""A local standalone Mooncake instance: a ``mooncake_master`` (with its
embedded HTTP metadata server) and a ``mooncake_client`` storage process that
contributes memory, both from the ``mooncake-transfer-engine`` wheel, on
loopback and free ports. Used by ``mooncake-connector standalone``, ``make
demo`` and the test fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

WHEEL = "mooncake-transfer-engine-non-cuda==0.3.13.post1"
LOOPBACK = "127.0.0.1"


class StandaloneError(RuntimeError):
    """The instance could not be started; the message says why and where the logs are."""


def find_binary(name: str) -> str:
    """Path of a Mooncake executable: on PATH, beside this Python, or in the wheel."""
    candidates = [shutil.which(name), str(Path(sys.executable).parent / name)]
    try:
        import mooncake  # noqa: PLC0415 - optional dependency

        candidates.append(str(Path(mooncake.__file__).parent / name))
    except ImportError:
        pass
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise StandaloneError(f"{name} not found: install the Mooncake wheel (pip install {WHEEL})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (one bind-and-close may hand out a port twice)."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def _port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


# Sockets Mooncake (0.3.13) binds to all interfaces with no flag or variable to
# choose the address, and why (checked in its source).
WILDCARD_SOCKETS = {
    "master": "the master's HTTP metadata server: Mooncake binds it to 0.0.0.0 whatever "
              "--http_metadata_server_host says (it passes no address to its HTTP server)",
    "client": "the transfer engine's handshake and TCP data listeners: Mooncake binds them to all "
              "interfaces with no option to choose (MC_TCP_BIND_ADDRESS only sets the address it "
              "advertises); their ports come from MC_MIN_RPC_PORT..MC_MAX_RPC_PORT (15000-17000)",
}


def _listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets process `pid` listens on, from /proc."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return sorted(set(found))


@dataclass
class StandaloneInstance:
    """A running master + storage process. Stop it with :meth:`stop` (or use
    it as a context manager)."""

    master_port: int
    metrics_port: int
    metadata_port: int
    client_port: int
    segment_size: str
    log_dir: Path
    storage_ports: list[int] = field(default_factory=list)
    # The master first, then one mooncake_client per storage port.
    processes: list[subprocess.Popen] = field(default_factory=list)
    # The address every socket that Mooncake lets us place is bound to.
    host: str = LOOPBACK

    @property
    def master_address(self) -> str:
        return f"{self.host}:{self.master_port}"

    @property
    def client_address(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def metadata_server(self) -> str:
        return f"http://{self.host}:{self.metadata_port}/metadata"

    def env(self) -> dict[str, str]:
        """Environment for clients of this instance (pure clients by default:
        the storage process holds the data)."""
        return {
            "MOONCAKE_MASTER": self.master_address,
            "MOONCAKE_TE_META_DATA_SERVER": self.metadata_server,
            "MOONCAKE_PROTOCOL": "tcp",
            "MOONCAKE_LOCAL_HOSTNAME": self.host,
            "MOONCAKE_MASTER_METRICS_PORT": str(self.metrics_port),
            "MOONCAKE_GLOBAL_SEGMENT_SIZE": "0",
        }

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def listening(self) -> list[tuple[str, str, int, str]]:
        """Every listening TCP socket of the instance's processes: (process,
        address, port, why it is on all interfaces or ""). Mooncake binds
        some to all interfaces whatever it is asked (see WILDCARD_SOCKETS)."""
        out = []
        for i, proc in enumerate(self.processes):
            name = "mooncake_master" if i == 0 else f"mooncake_client (storage {i})"
            for address, port in _listening_sockets(proc.pid):
                why = ""
                if address in ("0.0.0.0", "::"):
                    why = WILDCARD_SOCKETS["master" if i == 0 else "client"]
                out.append((name, address, port, why))
        return out

    def stored_keys(self) -> Optional[int]:
        """How many keys the instance holds (the master's count); None if it
        cannot say."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/get_all_keys",
                                        timeout=2) as r:
                return sum(1 for k in r.read().decode(errors="replace").split("\n") if k.strip())
        except OSError:
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; client first, master last."""
        for p in reversed(self.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes.clear()

    def __enter__(self) -> "StandaloneInstance":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StandaloneError(f"{what} exited with code {proc.returncode}; see {log}:\n"
                                  + _tail(log))
        if ready():
            return
        time.sleep(0.1)
    raise StandaloneError(f"{what} not ready after {timeout:.0f}s; see {log}:\n" + _tail(log))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _master_healthy(port: int, host: str = LOOPBACK) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def start(segment_size: str = "1gb", local_buffer_size: str = "64mb",
          lease_ttl_ms: Optional[int] = 1000, log_dir: Optional[str] = None,
          ready_timeout: float = 60.0, storage_processes: int = 1,
          host: str = LOOPBACK) -> StandaloneInstance:
    """Starts a master and ``storage_processes`` storage processes (each
    contributing ``segment_size``); returns once all serve.

    ``lease_ttl_ms`` is the master's read lease (Mooncake's default is 10 s).
    A key read within it cannot be removed (mooncake:// never force-removes),
    so a single-machine instance uses a short one; ``None`` keeps Mooncake's.
    More than one storage process gives ``replica_num`` > 1 distinct segments
    to put copies on; none leaves the memory to clients that contribute
    their own segments (``MOONCAKE_GLOBAL_SEGMENT_SIZE``).

    Every socket Mooncake lets us place is bound to ``host`` (loopback by
    default; another address of this machine serves other machines); those
    it binds to all interfaces regardless are listed by
    :meth:`StandaloneInstance.listening` (see ``WILDCARD_SOCKETS``).
    """
    if storage_processes < 0:
        raise ValueError(f"storage_processes must not be negative, got {storage_processes}")
    logs = Path(log_dir or tempfile.mkdtemp(prefix="mooncake-standalone-"))
    logs.mkdir(parents=True, exist_ok=True)
    master, metrics, metadata, *clients = free_ports(3 + storage_processes)
    inst = StandaloneInstance(master_port=master, metrics_port=metrics, metadata_port=metadata,
                              client_port=clients[0] if clients else 0, segment_size=segment_size, log_dir=logs,
                              storage_ports=clients, host=host)
    master_cmd = [
        find_binary("mooncake_master"),
        f"--rpc_port={inst.master_port}", f"--rpc_address={host}",
        f"--metrics_port={inst.metrics_port}", f"--metrics_host={host}",
        "--enable_http_metadata_server=true",
        f"--http_metadata_server_port={inst.metadata_port}",
        f"--http_metadata_server_host={host}",
    ]
    if lease_ttl_ms is not None:
        master_cmd.append(f"--default_kv_lease_ttl={lease_ttl_ms}")
    def client_cmd(port: int) -> list[str]:
        return [
            find_binary("mooncake_client"),
            f"--master_server_address={inst.master_address}",
            f"--metadata_server={inst.metadata_server}",
            f"--global_segment_size={segment_size}",
            f"--local_buffer_size={local_buffer_size}",
            f"--host={host}", f"--port={port}", "--protocol=tcp",
        ]

    steps = [("mooncake_master", master_cmd,
              lambda: _master_healthy(inst.metrics_port, host) and _port_open(inst.master_port, host))]
    for i, port in enumerate(inst.storage_ports):
        steps.append(("mooncake_client" if i == 0 else f"mooncake_client{i + 1}", client_cmd(port),
                      lambda port=port: _port_open(port, host)))
    try:
        for name, cmd, ready in steps:
            log = logs / f"{name}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            inst.processes.append(proc)
            _wait(name, ready, proc, log, ready_timeout)
    except BaseException:
        inst.stop()
        raise
    return inst
