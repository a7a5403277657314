"""One stress participant: ``python stress_worker.py URL SECONDS WRITER_ID
KEYS...`` sets, reads and removes the given keys for SECONDS and prints its
counts as JSON. Every value is tagged (writer, sequence, key) and its payload
derives from the tag, so any read can be checked to be exactly one complete
write of that key (stress.check)."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import sys
import time

TAG = b"MCSTRESS"


def make_value(writer: int, seq: int, key: str, size: int) -> bytes:
    head = TAG + struct.pack("<QQH", writer, seq, len(key.encode())) + key.encode()
    seed = hashlib.blake2b(head, digest_size=16).digest()
    reps = -(-size // len(seed)) if size else 0
    payload = (seed * reps)[:size]
    return head + payload


def check(value: bytes, key: str) -> str | None:
    """None if `value` is one complete tagged write of `key`; else why not."""
    if not value.startswith(TAG) or len(value) < len(TAG) + 18:
        return "untagged"
    writer, seq, klen = struct.unpack_from("<QQH", value, len(TAG))
    at = len(TAG) + 18
    tagged_key = value[at:at + klen].decode(errors="replace")
    if tagged_key != key:
        return f"bytes of key {tagged_key!r} read from {key!r}"
    size = len(value) - at - klen
    if value != make_value(writer, seq, key, size):
        return f"mixed or corrupted value (writer {writer}, seq {seq})"
    return None


def run(conn, seconds: float, writer: int, shared: list[str], own: list[str],
        sizes: list[int], remove_shared: bool, rng: random.Random) -> dict:
    counts = {"set": 0, "get": 0, "remove": 0, "list": 0, "wrong": 0, "errors": 0,
              "resource_exhausted": 0, "examples": []}
    seq = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        key = rng.choice(shared + own)
        op = rng.random()
        try:
            if op < 0.45:
                seq += 1
                conn.setbytes(key, make_value(writer, seq, key, rng.choice(sizes)))
                counts["set"] += 1
            elif op < 0.9:
                v = conn.getbytes(key)
                counts["get"] += 1
                if v is not None and (why := check(v, key)) is not None:
                    counts["wrong"] += 1
                    counts["examples"].append(why)
            elif op < 0.97 and (remove_shared or key in own):
                conn.remove(key)
                counts["remove"] += 1
            else:
                conn.list("stress/")
                counts["list"] += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            if type(e).__name__ == "ResourceExhaustedError":
                counts["resource_exhausted"] += 1
            else:
                counts["errors"] += 1
                counts["examples"].append(f"{type(e).__name__}: {e}")
    counts["examples"] = counts["examples"][:5]
    return counts


if __name__ == "__main__":
    from mooncake_connector import create_remote_connector

    url, seconds, writer = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    spec = json.loads(sys.argv[4])
    with create_remote_connector(url) as c:
        out = run(c, seconds, writer, spec["shared"], spec["own"], spec["sizes"], True,
                  random.Random(writer))
    print(json.dumps(out))
