"""One soak participant: ``python soak_worker.py URL SECONDS WORKER WORKERS``
saves, loads, overwrites and removes models and plain keys on mooncake://
while the parent injects faults, and prints its counts as JSON.

Every model version is generated from (owner, version), which a small tag
tensor records, so any completed load is checked to be bit-exact one whole
save; plain values are tagged as in stress_worker. A failure must be one of
the clear errors (CLEAR); anything else is counted as unclear."""

from __future__ import annotations

import json
import random
import sys
import time

import torch

import stress_worker

CLEAR = ("UnavailableError", "DataLossError", "NotFoundError", "FailedPreconditionError",
         "ResourceExhaustedError", "DeadlineExceededError", "AbortedError")


def model_version(owner: int, version: int, tensors: int = 6, kib: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(owner * 1_000_003 + version)
    sd = {f"layers.{i}.weight": torch.randint(0, 1 << 15, (kib * 512,), generator=g,
                                               dtype=torch.int16).view(torch.bfloat16)
          for i in range(tensors)}
    sd["tag"] = torch.tensor([owner, version], dtype=torch.int64)
    return sd


def check_model(sd: dict[str, torch.Tensor]) -> str | None:
    """None if `sd` is exactly one saved version; else why not."""
    if "tag" not in sd:
        return f"no tag tensor among {sorted(sd)[:4]}"
    owner, version = (int(x) for x in sd["tag"].tolist())
    expected = model_version(owner, version)
    if set(sd) != set(expected):
        return f"tensors {sorted(set(sd) ^ set(expected))[:4]} differ from version {owner}/{version}"
    for name, t in expected.items():
        if not torch.equal(sd[name].view(torch.uint8), t.view(torch.uint8)):
            return f"tensor {name} is not that of version {owner}/{version}"
    return None


def classify(counts: dict, e: Exception) -> None:
    """Counts a failure: a clear error by kind, anything else as unclear."""
    kind = type(e).__name__
    if kind in CLEAR:
        counts["clear_errors"][kind] = counts["clear_errors"].get(kind, 0) + 1
    else:
        counts["unclear"] += 1
        counts["examples"].append(f"{kind}: {e}")


def run(url: str, seconds: float, worker: int, workers: int, rng: random.Random) -> dict:
    from mooncake_connector import create_remote_connector  # noqa: PLC0415

    counts: dict = {"model_save": 0, "model_load": 0, "model_remove": 0, "set": 0, "get": 0,
                    "remove": 0, "wrong": 0, "unclear": 0, "clear_errors": {}, "examples": []}
    version = 0
    own_model = f"soak/model/{worker}"
    shared_keys = [f"soak/kv/{i}" for i in range(4)]
    end = time.monotonic() + seconds
    # `url` has "{}" where the path (model name) goes. The master may be
    # down when this process first connects (a fault): that is a clear
    # error, counted, and the connection is tried again.
    while True:
        try:
            kv = create_remote_connector(url.format("soak"))
            break
        except Exception as e:  # noqa: BLE001 - classified as every failure below
            if type(e).__name__ not in CLEAR or time.monotonic() >= end:
                raise
            classify(counts, e)
            time.sleep(0.5)
    with kv:
        while time.monotonic() < end:
            op = rng.random()
            try:
                if op < 0.2:
                    version += 1
                    with create_remote_connector(url.format(own_model)) as c:
                        c.save_state_dict(model_version(worker, version))
                    counts["model_save"] += 1
                elif op < 0.5:
                    name = f"soak/model/{rng.randrange(workers)}"
                    with create_remote_connector(url.format(name)) as c:
                        sd = c.load_state_dict()
                    counts["model_load"] += 1
                    if (why := check_model(sd)) is not None:
                        counts["wrong"] += 1
                        counts["examples"].append(f"{name}: {why}")
                elif op < 0.55:
                    with create_remote_connector(url.format(own_model)) as c:
                        c.remove_model()
                    counts["model_remove"] += 1
                elif op < 0.75:
                    key = rng.choice(shared_keys)
                    version += 1
                    size = rng.choice([50, 5000, 200_000])
                    kv.setbytes(key, stress_worker.make_value(worker, version, key, size))
                    counts["set"] += 1
                elif op < 0.97:
                    key = rng.choice(shared_keys)
                    v = kv.getbytes(key)
                    counts["get"] += 1
                    if v is not None and (why := stress_worker.check(v, key)) is not None:
                        counts["wrong"] += 1
                        counts["examples"].append(f"{key}: {why}")
                else:
                    kv.remove(rng.choice(shared_keys))
                    counts["remove"] += 1
            except Exception as e:  # noqa: BLE001 - every failure is classified
                classify(counts, e)
    counts["examples"] = counts["examples"][:8]
    return counts


if __name__ == "__main__":
    url, secs, me, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(run(url, secs, me, n, random.Random(me))), flush=True)
