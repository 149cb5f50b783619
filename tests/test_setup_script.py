"""env/setup.sh refuses a fresh install on a disk that cannot hold it, before it writes anything."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("python3.11") is None, reason="setup.sh needs python3.11")
def test_setup_refuses_when_disk_is_short(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "env", tmp_path / "env")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    proc = subprocess.run(
        ["bash", "env/setup.sh"],
        cwd=tmp_path,
        env={**os.environ, "SIDREPRO_VENV_FREE_GB": "1000000"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "needs about 1000000 GB of free disk" in proc.stderr
    assert "rerun" in proc.stderr
    assert not (tmp_path / ".venv").exists()
