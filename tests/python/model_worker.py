"""A separate process for the model tests: saves or loads one rank of a
generated model over mooncake:// (the parent exported MOONCAKE_* for it).

  model_worker.py save URL RANK WORLD N_TENSORS TENSOR_KIB BATCH_KIB
      prints "progress DONE TOTAL" lines as the save goes, then "saved"
  model_worker.py load URL RANK
      prints {name: sha256 of the tensor's bytes} as JSON
  model_worker.py resave URL SECONDS N_TENSORS TENSOR_KIB BATCH_KIB
      saves rank 0 of 1 again and again for SECONDS, alternating between
      the generated versions 0 and 1 (rank_state_dict's seed), and prints
      {"saved": N, "stopped": M} (saves that stopped because another save
      of the model began meanwhile) as JSON
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import torch

from mooncake_connector import AbortedError, create_remote_connector


def rank_state_dict(rank: int, n: int, kib: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + rank)
    return {f"layers.{i}.weight": torch.randint(0, 256, (kib * 1024,), generator=g,
                                                 dtype=torch.uint8).view(torch.bfloat16)
            for i in range(n)}


def digests(sd: dict[str, torch.Tensor]) -> dict[str, str]:
    return {n: hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for n, t in sd.items()}


def resave(c, n: int, kib: int, batch_kib: int, go_on, first: int = 0) -> dict[str, int]:
    """Saves rank 0 of 1 again and again while go_on(), alternating the
    generated versions 0 and 1 (starting with `first`); returns how many
    saves finished and how many stopped because another save of the model
    began meanwhile."""
    versions = [rank_state_dict(v, n, kib) for v in range(2)]
    counts = {"saved": 0, "stopped": 0}
    v = first
    while go_on():
        try:
            c.save_state_dict(versions[v], batch_bytes=batch_kib * 1024)
            counts["saved"] += 1
        except AbortedError as e:
            assert "two saves at once" in str(e), e
            counts["stopped"] += 1
        v ^= 1
    return counts


def main() -> None:
    mode, url = sys.argv[1], sys.argv[2]
    with create_remote_connector(url) as c:
        if mode == "save":
            rank, world, n, kib, batch_kib = map(int, sys.argv[3:8])

            def progress(done: int, total: int) -> None:
                print(f"progress {done} {total}", flush=True)

            c.save_state_dict(rank_state_dict(rank, n, kib), rank=rank, world_size=world,
                              batch_bytes=batch_kib * 1024, progress=progress)
            print("saved", flush=True)
        elif mode == "resave":
            end = time.monotonic() + float(sys.argv[3])
            n, kib, batch_kib = map(int, sys.argv[4:7])
            counts = resave(c, n, kib, batch_kib, lambda: time.monotonic() < end, first=1)
            print(json.dumps(counts), flush=True)
        else:
            rank = int(sys.argv[3])
            print(json.dumps(digests(c.load_state_dict(rank))), flush=True)


if __name__ == "__main__":
    main()
