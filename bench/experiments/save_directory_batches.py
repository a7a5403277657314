"""save_directory (what the CLI's `save` runs) of a 1.1 GiB two-shard folder
in 256 MiB against 1 GiB batches: each sample a new process (a connector set
up, then the save timed), the two batch sizes alternated, medians with min and
max. Each saved model is checked complete and removed before the next sample.
What docs/performance.md cites for save_directory's default batch.

    python bench/experiments/save_directory_batches.py [--samples 5] [--modes tcp,own]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BATCHES = (256 << 20, 1 << 30)


def child(folder: str, batch: int, name: str) -> None:
    from mooncake_connector import create_remote_connector

    c = create_remote_connector(f"mooncake:///{name}")
    c.exists("warm-up")  # the client set up before the clock starts
    start = time.time()
    c._model().save_directory(folder, batch, None, False, True)
    took = time.time() - start
    info = c.inspect_model()
    if not info["complete"]:
        raise SystemExit(f"saved model is not complete: {info['problems']}")
    c.remove_model()
    print(json.dumps({"save": took}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--modes", default="tcp,own")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, batch, name = args.child
        child(folder, int(batch), name)
        return
    import safetensors.torch as st
    import torch

    from mooncake_connector import standalone

    with tempfile.TemporaryDirectory() as folder, \
            standalone.start(segment_size="3gb", local_buffer_size="64mb") as instance:
        g = torch.Generator().manual_seed(1)
        for shard in range(2):  # 2 x 17 x 32 MiB bf16
            sd = {f"model.layers.{shard}.w{i}": torch.randint(-30000, 30000, (4096, 4096), dtype=torch.int16,
                                                              generator=g).view(torch.bfloat16) for i in range(17)}
            st.save_file(sd, f"{folder}/model-{shard + 1:05d}-of-00002.safetensors")
        with open(f"{folder}/config.json", "w") as f:
            f.write("{}")
        print(f"save_directory of {2 * 17 * 32} MiB in two shards, {args.samples} new-process samples per row")
        for mode in args.modes.split(","):
            env = dict(os.environ, **instance.env(), GLOG_minloglevel="3")
            if mode == "own":  # the saving process contributes a segment, as an engine may
                env["MOONCAKE_GLOBAL_SEGMENT_SIZE"] = "2gb"
            times: dict[int, list[float]] = {b: [] for b in BATCHES}
            for k in range(args.samples):
                for batch in BATCHES:
                    out = subprocess.run([sys.executable, __file__, "--child", folder, str(batch), f"exp/dir{k}-{batch}"],
                                         env=env, capture_output=True, text=True, timeout=600)
                    if out.returncode != 0:
                        raise SystemExit(out.stderr[-3000:])
                    times[batch].append(json.loads(out.stdout.strip().splitlines()[-1])["save"])
            for batch in BATCHES:
                t = times[batch]
                print(f"{mode:<5} batch {batch >> 20:5d} MiB  save {statistics.median(t):.3f} s "
                      f"(min {min(t):.3f}, max {max(t):.3f})", flush=True)


if __name__ == "__main__":
    main()
