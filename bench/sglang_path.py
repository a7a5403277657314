"""SGLang's own loading paths over mooncake:// (issue 23, item 4), cold: every
sample is a new process running SGLang's real loader on the CPU (a world of
one on gloo, our plugin loaded by SGLang's load_plugins), rows alternated
round by round, medians with min and max. Run it with the SGLang venv's
Python (`make bench-sglang`).

Rows (one Llama-like model, bf16):
  engine in place   stored by SGLang's own save_model (engine layout: its
                    fused parameters); RemoteModelLoader's KV path, which
                    the plugin turns into load_into the model's parameters
  engine copied     the same with MOONCAKE_CONNECTOR_IN_PLACE=0: SGLang
                    copies each tensor weight_iterator yields into its
                    parameter (what the KV path does without the plugin)
  checkpoint        the folder stored by `mooncake-connector save`
                    (checkpoint layout); SGLang's file path,
                    model.load_weights(weight_iterator()), which fuses
  raw + copy        the raw wheel doing an engine's work: SGLang builds the
                    same model, then one batch_get_into of the engine
                    layout's bytes into a fresh buffer, each tensor copied
                    into its parameter
  disk              SGLang's own disk loader over the folder (page cache
                    warm), for reference
Two clocks per row: `load_model`, from just before the model is built to
its weights in place (the connector's Mooncake client, like the raw wheel's,
is set up before: SGLang's ModelConfig opens one to fetch the config), and
`weights`, the weights alone: the time inside SGLang's weight-loading call
(RemoteModelLoader's KV or file load, the disk loader's
load_weights_and_postprocess), for the raw wheel from after the model is
built. Building the model costs seconds of SGLang's own (about 3.4 s for a
tiny one here), the same for every row. After the clocks stop each child
checks every parameter against the saved model's (a sum of its 16-bit
words), so a load that wrote nothing cannot pass.

Targets (issue 23), on `weights`: engine in place >= 0.95x raw + copy
(load_into's goal); checkpoint >= 0.8x raw + copy (the load_weights path).

  python bench/sglang_path.py [--full] [--samples 5]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from bench_tp import write_folder  # noqa: E402
from harness import write_result  # noqa: E402

ROWS = ["engine in place", "engine copied", "checkpoint", "raw + copy", "disk"]
TARGETS = [("engine in place", "raw + copy", 0.95), ("checkpoint", "raw + copy", 0.8),
           ("engine copied", "raw + copy", None)]
CLOCKS = ("load_model", "weights")
GiB = 2**30


# ---- the child: SGLang in a process of its own ---------------------------------

def _word_sum(t: torch.Tensor) -> int:
    return int(t.detach().contiguous().reshape(-1).view(torch.int16).sum(dtype=torch.int64))


def _engine_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from sglang.srt.model_loader.loader import ShardedStateLoader

    return ShardedStateLoader._filter_subtensors(model.state_dict())  # noqa: SLF001


def _raw_store():
    from mooncake.store import MooncakeDistributedStore

    store = MooncakeDistributedStore()
    assert store.setup(os.environ["MOONCAKE_LOCAL_HOSTNAME"], os.environ["MOONCAKE_TE_META_DATA_SERVER"], 0,
                       256 << 20, "tcp", "", os.environ["MOONCAKE_MASTER"]) == 0
    return store


def child(row: str, spec: dict) -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "sglang"))
    import numpy as np
    import tp_worker  # SGLang's rank setup as its scheduler does it, the stand-ins for CPU-only SGLang
    from sglang.srt.configs.device_config import DeviceConfig
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader import get_model_loader

    tp_worker.setup(0, 1, spec["port"])
    cpu = DeviceConfig("cpu")
    if row == "save":  # SGLang's save_model (engine layout) and the raw wheel's copy of the same bytes
        from sglang.srt.model_loader.loader import RemoteModelLoader

        config = ModelConfig(model_path=spec["folder"], dtype="bfloat16")
        model = get_model_loader(LoadConfig(load_format="auto"), config).load_model(model_config=config,
                                                                                   device_config=cpu)
        RemoteModelLoader.save_model(model, spec["folder"], spec["engine_url"])
        params = _engine_params(model)
        bufs = {n: t.detach().contiguous().reshape(-1).view(torch.uint8).numpy() for n, t in params.items()}
        store = _raw_store()
        for n, b in bufs.items():
            assert store.register_buffer(b.ctypes.data, b.nbytes) == 0
        keys = [f"{spec['raw_prefix']}/{n}" for n in bufs]
        assert all(r == 0 for r in store.batch_put_from(keys, [b.ctypes.data for b in bufs.values()],
                                                        [b.nbytes for b in bufs.values()]))
        store.close()
        return {"sums": {n: _word_sum(t) for n, t in params.items()},
                "bytes": sum(b.nbytes for b in bufs.values())}

    weights = _time_weight_loading()
    os.environ["MOONCAKE_CONNECTOR_IN_PLACE"] = "0" if row == "engine copied" else "1"
    where = {"checkpoint": spec["checkpoint_url"], "disk": spec["folder"]}.get(row, spec["engine_url"])
    config = ModelConfig(model_path=where, dtype="bfloat16")
    if row == "raw + copy":
        from sglang.srt.model_loader.loader import _initialize_model
        from sglang.srt.model_loader.utils import set_default_torch_dtype

        store = _raw_store()
        names = list(spec["sums"])
        start = time.time()
        with set_default_torch_dtype(config.dtype), torch.device("cpu"):
            model = _initialize_model(config, LoadConfig(load_format="remote"), None)
        params = _engine_params(model)
        built = time.time()
        sizes = [params[n].numel() * params[n].element_size() for n in names]
        buf = np.empty(sum(sizes), dtype=np.uint8)  # never touched: faulted in by the load
        assert store.register_buffer(buf.ctypes.data, buf.nbytes) == 0
        offsets = np.cumsum([0, *sizes[:-1]]).tolist()
        got = store.batch_get_into([f"{spec['raw_prefix']}/{n}" for n in names],
                                   [buf.ctypes.data + o for o in offsets], sizes)
        assert list(got) == sizes, got
        flat = torch.from_numpy(buf)
        with torch.no_grad():
            for n, o, s in zip(names, offsets, sizes):
                params[n].data.copy_(flat[o:o + s].view(params[n].dtype).view(params[n].shape))
        done = time.time()
        weights.append(done - built)
    else:
        loader = get_model_loader(LoadConfig(load_format="auto" if row == "disk" else "remote"), config)
        start = time.time()
        model = loader.load_model(model_config=config, device_config=cpu)
        done = time.time()
        params = _engine_params(model)
    bad = [n for n, want in spec["sums"].items() if n not in params or _word_sum(params[n]) != want]
    if bad or len(params) != len(spec["sums"]):
        raise SystemExit(f"{row}: {len(bad)} parameters do not hold the saved model's bytes, e.g. {bad[:3]}")
    if row.startswith("engine"):  # the row's path was taken: filled in place, or copied by SGLang
        from mooncake_connector import sglang_plugin

        stats = sglang_plugin.last_load_stats()
        if bool(stats.get("filled_in_place")) != (row == "engine in place"):
            raise SystemExit(f"{row}: the plugin's load_stats say {stats}")
    assert len(weights) == 1, weights
    return {"load_model": done - start, "weights": weights[0]}


def _time_weight_loading() -> list[float]:
    """Wraps SGLang's weight-loading calls (the plugin's hooks stay inside)
    so that each appends its seconds to the returned list."""
    from sglang.srt.model_loader.loader import DefaultModelLoader, RemoteModelLoader

    spent: list[float] = []

    def timed(fn):
        def wrapper(*args, **kwargs):
            start = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent.append(time.time() - start)
        return wrapper

    for name in ("_load_model_from_remote_kv", "_load_model_from_remote_fs"):
        setattr(RemoteModelLoader, name, timed(getattr(RemoteModelLoader, name)))
    DefaultModelLoader.load_weights_and_postprocess = staticmethod(
        timed(DefaultModelLoader.load_weights_and_postprocess))
    return spent


def sample(row: str, spec: dict, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", row], input=json.dumps(spec), env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{row} failed: {out.stdout[-1500:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the parent ------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="~1 GiB, 8 layers (default: ~0.4 GiB)")
    parser.add_argument("--tiny", action="store_true", help="a few MiB: checks that every row runs")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--out", default="bench/results/sglang_path.json")
    parser.add_argument("--child", choices=[*ROWS, "save"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(sys.stdin.read()))), flush=True)
        os._exit(0)  # no gloo teardown
    os.environ.setdefault("GLOG_minloglevel", "3")
    from mooncake_connector import standalone

    size_mib, vocab, hidden = (1040, 32000, 2048) if args.full else (2, 256, 128) if args.tiny else (400, 16000, 2048)
    log = lambda s: print(s, flush=True)  # noqa: E731
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, \
            standalone.start(segment_size="4gb", local_buffer_size="256mb", lease_ttl_ms=None,
                             storage_processes=1) as inst:
        folder = Path(tmp) / "llama"
        size = write_folder(folder, size_mib, vocab, hidden)
        env = {**os.environ, **inst.env(), "MOONCAKE_LOCAL_BUFFER_SIZE": "256mb", "SGLANG_PLUGINS": "mooncake"}
        spec = {"folder": str(folder), "engine_url": "mooncake:///sglang-path/engine",
                "checkpoint_url": "mooncake:///sglang-path/checkpoint", "raw_prefix": "sglang-path-raw",
                "port": standalone.free_port()}
        cli = [sys.executable, "-m", "mooncake_connector.cli", "save", str(folder), spec["checkpoint_url"]]
        subprocess.run(cli, env=env, check=True, capture_output=True)
        saved = sample("save", spec, env)
        spec["sums"] = saved["sums"]
        log(f"SGLang's loaders over mooncake:// (tcp): llama-like, {size / GiB:.3f} GiB checkpoint, "
            f"{saved['bytes'] / GiB:.3f} GiB of engine parameters; {args.samples} samples per row, each a new "
            f"process")
        times: dict[str, list[dict]] = {row: [] for row in ROWS}
        for i in range(args.samples):
            order = ROWS[i % len(ROWS):] + ROWS[:i % len(ROWS)]
            for row in order:
                spec["port"] = standalone.free_port()
                times[row].append(sample(row, spec, env))
            log(f"  round {i + 1}/{args.samples} " +
                " ".join(f"{r}={times[r][-1]['weights']:.2f}s" for r in ROWS))
    rows = []
    for r in ROWS:
        entry = {"row": r, "bytes": saved["bytes"], "samples": times[r]}
        for clock in CLOCKS:
            values = [t[clock] for t in times[r]]
            entry[clock] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        rows.append(entry)
    by = {r["row"]: r for r in rows}
    checks = []
    for ours, raw, goal in TARGETS:
        ratio = by[raw]["weights"]["median"] / by[ours]["weights"]["median"]
        checks.append({"target": f"{ours} vs {raw} (weights)", "ratio": ratio, "goal": goal,
                       "met": goal is None or ratio >= goal})
    print(f"\n{'row':<17} {'load_model s (min-max)':>24} {'weights s (min-max)':>22} {'GiB/s':>6}")
    for r in rows:
        cells = [f"{r[k]['median']:.2f} ({r[k]['min']:.2f}-{r[k]['max']:.2f})" for k in CLOCKS]
        print(f"{r['row']:<17} {cells[0]:>24} {cells[1]:>22} {r['bytes'] / GiB / r['weights']['median']:6.2f}")
    print(f"\n{'ratio of medians, raw time / ours':<42} {'ratio':>6} {'goal':>6}")
    for c in checks:
        goal = f"{c['goal']:6.2f}" if c["goal"] else "     -"
        print(f"{c['target']:<42} {c['ratio']:6.2f} {goal} {'' if c['goal'] is None else 'met' if c['met'] else 'MISSED'}")
    command = "python bench/sglang_path.py" + (" --full" if args.full else " --tiny" if args.tiny else "") + \
        (f" --samples {args.samples}" if args.samples != 5 else "")
    write_result(args.out, "sglang_path", command, seconds=time.monotonic() - start, rows=rows, targets=checks)


if __name__ == "__main__":
    main()
