"""The seed document's usage example, verbatim but for the import and the URL
(memory:// instead of mooncake://), and the shipped examples/seed_example.py."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_seed_example_inline():
    from mooncake_connector import create_remote_connector
    import torch

    # Initialize the connector
    # The URL path can be used to specify a key or prefix, but the base connection
    # is configured via environment variables.
    connector = create_remote_connector("memory://", device="cpu")

    # Store a tensor
    key = "my_model_weight"
    tensor = torch.randn(1024, 1024)
    connector.set(key, tensor)

    # Retrieve a tensor
    retrieved_tensor = connector.get(key)
    assert torch.allclose(tensor, retrieved_tensor)

    # Store and retrieve strings
    connector.setstr("config_json", '{"hidden_size": 1024}')
    config = connector.getstr("config_json")

    # Beyond the seed: the results are exact.
    assert config == '{"hidden_size": 1024}'
    assert torch.equal(tensor.view(torch.uint8), retrieved_tensor.view(torch.uint8))
    assert retrieved_tensor.shape == (1024, 1024) and retrieved_tensor.dtype == torch.float32
    connector.close()


def test_seed_example_script_runs():
    script = os.path.join(REPO, "examples", "seed_example.py")
    assert os.path.isfile(script), f"{script} is missing"
    proc = subprocess.run([sys.executable, script], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
