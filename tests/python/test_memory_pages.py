"""Loaded tensors of 2 MiB or more live in memory advised to use transparent
huge pages (one page fault per 2 MiB when first touched), unless
MOONCAKE_CONNECTOR_HUGE_PAGES=0 turns that off. Each case runs in a new
process: the setting is read once per process."""

import os
import subprocess
import sys

import pytest

CHILD = r"""
import torch
from mooncake_connector import create_remote_connector

c = create_remote_connector("memory://pages/m")
c.save_state_dict({"w": torch.ones(4 << 20, dtype=torch.uint8)})
t = c.load_state_dict()["w"]
address = t.data_ptr()
flags = None
with open("/proc/self/smaps") as smaps:
    inside = False
    for line in smaps:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            flags = line.split()[1:]
            break
assert flags is not None, "no mapping holds the tensor"
print("hg" in flags)
"""


@pytest.mark.parametrize("setting, advised", [(None, True), ("1", True), ("0", False)])
def test_large_tensors_ask_for_huge_pages_unless_turned_off(setting, advised):
    env = dict(os.environ)
    env.pop("MOONCAKE_CONNECTOR_HUGE_PAGES", None)
    if setting is not None:
        env["MOONCAKE_CONNECTOR_HUGE_PAGES"] = setting
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(advised)
