"""One rank of SGLang at tensor-parallel degree WORLD on the CPU (gloo), as
its scheduler processes set up: ServerArgs published with SpawnRanks,
init_distributed_environment, initialize_model_parallel, our plugin loaded
by SGLang's load_plugins(). Prints one JSON line.

  tp_worker.py MODE FOLDER URL RANK WORLD PORT

MODE:
  load         SGLang's disk loader reads FOLDER; its remote loader reads URL
               (through the plugin); every parameter of this rank is
               compared bit for bit. Reports the cooperative load's stats.
  save-engine  the disk-loaded model saved to URL by SGLang's own
               RemoteModelLoader.save_model (engine layout, this rank's
               shards)."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).with_name("stand_ins")))
_TORCHVISION = torch.library.Library("torchvision", "DEF")  # see conftest._define_torchvision_ops
for _op in ("nms", "qnms"):
    _TORCHVISION.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def setup(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), SGLANG_PLUGINS="mooncake")
    from sglang.srt.distributed import parallel_state as ps
    from sglang.srt.plugins import load_plugins
    from sglang.srt.runtime_context import SpawnRanks, get_parallel, publish, reset_context
    from sglang.srt.server_args import ServerArgs

    load_plugins()
    ps.init_distributed_environment(world_size=world, rank=rank, local_rank=rank, backend="gloo")
    reset_context()
    publish(ServerArgs(model_path="dummy", tp_size=world, ep_size=1, pp_size=1, device="cpu"),
            role="test", ranks=SpawnRanks(world_rank=rank))
    if ps._WORLD is not None:  # noqa: SLF001 - as SGLang's own scheduler does
        get_parallel().override_permanently(world_group=ps._WORLD)  # noqa: SLF001
    ps.initialize_model_parallel(backend="gloo")
    assert get_parallel().tp_rank == rank


def load(model_path: str, load_format: str):
    from sglang.srt.configs.device_config import DeviceConfig
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader import get_model_loader

    config = ModelConfig(model_path=model_path, dtype="bfloat16")
    loader = get_model_loader(LoadConfig(load_format=load_format), config)
    return loader, loader.load_model(model_config=config, device_config=DeviceConfig("cpu"))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def main() -> int:
    mode, folder, url = sys.argv[1], sys.argv[2], sys.argv[3]
    rank, world, port = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    out: dict = {"rank": rank, "world": world}
    try:
        setup(rank, world, port)
        _, disk = load(folder, "auto")
        expected = {k: v.detach().clone() for k, v in disk.state_dict().items()}
        if mode == "save-engine":
            from sglang.srt.model_loader.loader import RemoteModelLoader

            RemoteModelLoader.save_model(disk, folder, url)
        else:
            from mooncake_connector import sglang_plugin

            start = time.perf_counter()
            loader, remote = load(url, "remote")
            out["seconds"] = time.perf_counter() - start
            out["loader"] = type(loader).__name__
            actual = remote.state_dict()
            out["params"] = len(expected)
            out["mismatched"] = sorted(k for k in expected if k not in actual or not torch.equal(
                bits(actual[k]), bits(expected[k])) or actual[k].shape != expected[k].shape)
            out["extra"] = sorted(set(actual) - set(expected))
            out["shapes"] = {k: list(v.shape) for k, v in expected.items() if "qkv_proj" in k}
            out["stats"] = sglang_plugin.last_load_stats()
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out.update(error=type(e).__name__, message=str(e), trace=traceback.format_exc()[-3000:])
    print(json.dumps(out), flush=True)
    os._exit(0)  # no teardown collectives with peers that may have failed


if __name__ == "__main__":
    sys.exit(main())
