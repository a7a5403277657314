"""device="cuda" on a GPU machine: a 1 GiB bf16 state dict saved into
memory:// and loaded onto the GPU with load_state_dict, weight_iterator and
load_into, checked bit for bit, beside a pinned host-to-device copy of the
same bytes. The simple path (host tensor, then .to(device)); the pinned,
pipelined path is the performance issue's. Recorded run:
bench/results/gpu_check.txt.

    python bench/gpu_check.py
"""
import time, torch
from mooncake_connector import create_remote_connector
print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
torch.manual_seed(0)
sd = {f"layers.{i}.w": torch.randn(4096, 4096, dtype=torch.bfloat16) for i in range(32)}  # 1 GiB
nbytes = sum(t.numel() * t.element_size() for t in sd.values())
with create_remote_connector("memory://gpu/model", device="cuda") as c:
    c.save_state_dict(sd)
    for rep in range(3):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        loaded = c.load_state_dict(device="cuda")
        torch.cuda.synchronize(); dt = time.perf_counter() - t0
        print(f"load_state_dict(device='cuda') from memory://: {nbytes/2**30:.2f} GiB in {dt:.3f} s = {nbytes/dt/1e9:.2f} GB/s")
    assert all(torch.equal(loaded[n].cpu(), t) for n, t in sd.items())
    it = [(n, t) for n, t in c.weight_iterator()]
    assert all(t.device.type == "cuda" for _, t in it)
    dest = {n: torch.empty_like(t, device="cuda") for n, t in sd.items()}
    torch.cuda.synchronize(); t0 = time.perf_counter()
    c.load_into(dest); torch.cuda.synchronize(); dt = time.perf_counter() - t0
    print(f"load_into(cuda tensors) from memory://: {nbytes/dt/1e9:.2f} GB/s")
    assert all(torch.equal(dest[n].cpu(), t) for n, t in sd.items())
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory(); dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    for _ in range(2):
        torch.cuda.synchronize(); t0 = time.perf_counter(); dev.copy_(host); torch.cuda.synchronize(); dt = time.perf_counter() - t0
    print(f"pinned host-to-device copy of the same bytes: {nbytes/dt/1e9:.2f} GB/s")
print("bit-exact on cuda: OK")
