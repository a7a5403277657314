"""One process of a cooperative load (tests/python/test_group_load.py):
joins a gloo group of WORLD processes, loads MODEL's rank 0 with
weight_iterator(group=...), and prints one JSON line: the load stats and a
digest per tensor (or the error).

Usage: group_worker.py URL RANK WORLD PORT [BATCH_BYTES] [PAUSE_AFTER_BATCHES]

With GROUP_WORKER_DEVICE=cuda the processes load onto the GPU and exchange
their shares in device memory, as in an NCCL group; the group stays gloo
(which broadcasts CUDA tensors too), since NCCL refuses two processes of one
communicator on one GPU and the GPU machine we test on has one."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from mooncake_connector import _group, create_remote_connector


def main() -> int:
    url, rank, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    batch_bytes = int(sys.argv[5]) if len(sys.argv) > 5 else 256 << 20
    pause_after = int(sys.argv[6]) if len(sys.argv) > 6 else -1
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    out: dict = {"rank": rank}
    device = os.environ.get("GROUP_WORKER_DEVICE", "cpu")
    if device == "cuda":
        _group._exchanges_on_device = lambda group: True  # noqa: SLF001 - what an NCCL group gets
    try:
        with create_remote_connector(url, device=device) as c:
            digests = {}
            seen = 0
            for name, tensor in c.weight_iterator(group=dist.group.WORLD, batch_bytes=batch_bytes):
                assert tensor.device.type == device, (name, tensor.device)
                data = tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                digests[name] = [str(tensor.dtype), list(tensor.shape), hashlib.sha256(data).hexdigest()]
                seen += 1
                if pause_after >= 0 and seen == pause_after:
                    print(json.dumps({"rank": rank, "paused": True}), flush=True)
                    time.sleep(3600)
            out.update(digests=digests, stats=c.load_stats)
    except Exception as e:  # noqa: BLE001 - reported to the test
        out.update(error=type(e).__name__, message=str(e))
    print(json.dumps(out), flush=True)
    os._exit(0)  # no teardown collectives with peers that may be gone


if __name__ == "__main__":
    sys.exit(main())
