"""Fixtures for running SGLang's real model-loading code against our
connector: a standalone Mooncake instance (master + storage process on
loopback), SGLang's plugins loaded, and a single-process gloo world on the
CPU. Runs in .venv-sglang (``make test-sglang``), never in the main .venv.
"""

from __future__ import annotations

import pytest
import torch

from mooncake_connector import standalone


def _define_torchvision_ops() -> torch.library.Library | None:
    """The PyPI torchvision's native library is built against CUDA torch and
    fails to load against the CPU torch of .venv-sglang; its Python part then
    fails at import, registering fake kernels for operators that were never
    defined. SGLang imports torchvision (multimodal code), so the two
    operators it needs are defined here, schemas only, before anything
    imports it. Nothing here calls them."""
    try:
        torch.ops.torchvision.nms  # noqa: B018 - defined already (a working torchvision)
        return None
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return lib


# Kept alive for the session: a Library's definitions go with it.
_TORCHVISION_OPS = _define_torchvision_ops()


@pytest.fixture(scope="session")
def mooncake_cluster():
    """A standalone Mooncake instance; this process is a pure client of it,
    configured through the environment as SGLang's processes would be."""
    with standalone.start(segment_size="512mb", local_buffer_size="64mb",
                          lease_ttl_ms=500) as inst, \
            pytest.MonkeyPatch.context() as env:
        for k, v in inst.env().items():
            env.setenv(k, v)
        yield inst


@pytest.fixture(scope="session")
def sglang_plugins():
    """SGLang's own plugin loading, as an engine process runs it (here no
    engine runs, so the test calls it). ``SGLANG_PLUGINS`` names our entry
    point, so this also checks the name SGLang filters on."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SGLANG_PLUGINS", "mooncake")
        from sglang.srt.plugins import load_plugins

        load_plugins()
    yield


@pytest.fixture(scope="session")
def sglang_world():
    """A world of one process on gloo, with SGLang's model-parallel groups
    (its layers need them even at tp=1) and a published CPU ServerArgs."""
    from sglang.srt.distributed import parallel_state as ps
    from sglang.srt.runtime_context import SpawnRanks, publish, reset_context
    from sglang.srt.server_args import ServerArgs

    reset_context()
    publish(ServerArgs(model_path="dummy", device="cpu", tp_size=1),
            role="test", ranks=SpawnRanks(world_rank=0))
    ps.init_distributed_environment(
        world_size=1, rank=0, local_rank=0, backend="gloo",
        distributed_init_method=f"tcp://{standalone.LOOPBACK}:{standalone.free_port()}")
    ps.initialize_model_parallel(backend="gloo")
    try:
        yield
    finally:
        ps.destroy_model_parallel()
        ps.destroy_distributed_environment()
        reset_context()
