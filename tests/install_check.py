"""Checks the package as a user installs it: `pip install .` in a fresh venv,
without make, torch or the Mooncake wheel (make test-install runs it there).
What needs neither works; what needs one says how to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> None:
    bin_dir = Path(sys.executable).parent
    version = subprocess.run([str(bin_dir / "mooncake-connector"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("mooncake-connector "), version
    assert "no Mooncake wheel installed" in version.stdout, version.stdout

    from mooncake_connector import FailedPreconditionError, create_remote_connector

    with create_remote_connector("memory://install-check/m") as c:
        c.setstr("m/files/config.json", "{}")
        assert c.getstr("m/files/config.json") == "{}"
        assert c.list("m/") == ["m/files/config.json"]
        try:
            c.set("m/w", [1.0])
        except ImportError as e:
            assert "pip install 'mooncake-connector[torch]'" in str(e), e
        else:
            raise AssertionError("set of a tensor worked without torch installed?")
    assert "torch" not in sys.modules
    try:
        create_remote_connector("mooncake://127.0.0.1:9/m")
    except FailedPreconditionError as e:
        assert "pip install 'mooncake-connector[mooncake]'" in str(e), e
    else:
        raise AssertionError("mooncake:// opened without the Mooncake wheel?")
    print("install check passed: keys and strings without torch; torch and the wheel named when needed")


if __name__ == "__main__":
    main()
