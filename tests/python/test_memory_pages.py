"""Loaded tensors of 2 MiB or more live in memory advised to use transparent
huge pages (one page fault per 2 MiB when first touched), the connector's own
(load_state_dict) and the caller's (load_into: the whole huge pages inside
each destination), unless MOONCAKE_CONNECTOR_HUGE_PAGES=0 turns that off.
Each case runs in a new process: the setting is read once per process."""

import os
import subprocess
import sys

import pytest

CHILD = r"""
import sys

import torch
from mooncake_connector import create_remote_connector

c = create_remote_connector("memory://pages/m")
c.save_state_dict({"w": torch.ones(8 << 20, dtype=torch.uint8)})
if sys.argv[1] == "load_state_dict":
    t = c.load_state_dict()["w"]
elif sys.argv[1] == "load_into":
    t = torch.empty(8 << 20, dtype=torch.uint8)
    c.load_into({"w": t})
else:  # a reader told not to advise (the SGLang plugin's, for an engine's parameters)
    from mooncake_connector import _model
    t = torch.empty(8 << 20, dtype=torch.uint8)
    reader = c._model().reader(0, True, 1 << 30, None, advise_huge_pages=False)
    _model.load_into(c._model(), 0, {"w": t}, reader=reader)
assert bool((t == 1).all())
address = (t.data_ptr() + (4 << 20)) // (2 << 20) * (2 << 20)  # a huge page inside it
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


@pytest.mark.parametrize("how", ["load_state_dict", "load_into"])
@pytest.mark.parametrize("setting, advised", [(None, True), ("1", True), ("0", False)])
def test_large_tensors_ask_for_huge_pages_unless_turned_off(how, setting, advised):
    env = dict(os.environ)
    env.pop("MOONCAKE_CONNECTOR_HUGE_PAGES", None)
    if setting is not None:
        env["MOONCAKE_CONNECTOR_HUGE_PAGES"] = setting
    out = subprocess.run([sys.executable, "-c", CHILD, how], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(advised)


def test_a_reader_told_not_to_advise_leaves_the_destination_as_it_was():
    env = {k: v for k, v in os.environ.items() if k != "MOONCAKE_CONNECTOR_HUGE_PAGES"}
    out = subprocess.run([sys.executable, "-c", CHILD, "load_into without advice"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"
