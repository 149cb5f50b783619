"""Separate pinned environments: built from a pin file, reused while it is unchanged, rebuilt when it changes, and
refused with a clear error when the file is not pinned or the build fails (no stamp left behind)."""

from __future__ import annotations

import subprocess

import pytest

from sidrepro.cli import main
from sidrepro.envs import STAMP, EnvError, ensure_env, env_python, read_stamp


@pytest.mark.slow
def test_env_is_built_reused_and_rebuilt_on_a_pin_change(tmp_path):
    spec, env = tmp_path / "tool.txt", tmp_path / "envs" / "tool"
    spec.write_text("# python: 3.11\nsix==1.16.0\n")
    record = ensure_env(spec, env)
    assert "six==1.16.0" in record["freeze"] and record["python"] == "3.11"
    out = subprocess.run([env_python(env), "-c", "import six; print(six.__version__)"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "1.16.0"
    built = (env / STAMP).stat().st_mtime_ns
    assert ensure_env(spec, env) == record and (env / STAMP).stat().st_mtime_ns == built  # reused, not rebuilt
    spec.write_text("# python: 3.11\nsix==1.17.0\n")
    assert "six==1.17.0" in ensure_env(spec, env)["freeze"]
    spec.write_text("# python: 3.11\nsix==0.0.404\n")
    with pytest.raises(EnvError, match="installing"):
        ensure_env(spec, env)
    assert read_stamp(env) is None  # the failed build left no stamp: the next call starts over


def test_pin_files_must_pin_and_name_their_python(tmp_path, capsys):
    spec = tmp_path / "tool.txt"
    spec.write_text("# python: 3.11\nsix>=1.16\n")
    with pytest.raises(EnvError, match=r"unpinned requirements \['six>=1.16'\]"):
        ensure_env(spec, tmp_path / "env")
    spec.write_text("six==1.16.0\n")
    assert main(["env", "--spec", str(spec), "--out", str(tmp_path / "env")]) == 2
    assert "no '# python: X.Y' line" in capsys.readouterr().err
    spec.write_text("# python: 2.1\nsix==1.16.0\n")
    with pytest.raises(EnvError, match="SIDREPRO_PYTHON_2_1"):
        ensure_env(spec, tmp_path / "env")
    assert not (tmp_path / "env").exists()


def test_stage_lines_split_the_pin_file(tmp_path):
    from sidrepro.envs import stages

    spec = tmp_path / "tool.txt"
    spec.write_text("# python: 3.9\n# a comment\ntorch==1.12.1\nsix==1.16.0  # why\n\n"
                    "# stage: --no-build-isolation\nmmcv-full==1.7.1\n# stage: --no-deps --pre\n")
    assert stages(spec) == [([], ["torch==1.12.1", "six==1.16.0  # why"]),
                            (["--no-build-isolation"], ["mmcv-full==1.7.1"])]


def test_a_failing_pyenv_shim_falls_back_to_the_pyenv_interpreter(tmp_path, monkeypatch):
    import sys

    from sidrepro import envs

    root = tmp_path / "pyenv"
    for v in ("3.9.2", "3.9.18", "3.10.1"):
        exe = root / "versions" / v / "bin" / f"python{v.rsplit('.', 1)[0]}"
        exe.parent.mkdir(parents=True)
        exe.symlink_to(sys.executable)
    shim = tmp_path / "shim"
    shim.write_text("#!/bin/sh\nexit 127\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PYENV_ROOT", str(root))
    monkeypatch.delenv("SIDREPRO_PYTHON_3_9", raising=False)
    monkeypatch.setattr(envs.shutil, "which", lambda name: str(shim))
    assert envs.find_python("3.9") == str(root / "versions" / "3.9.18" / "bin" / "python3.9")


@pytest.mark.slow
def test_a_later_stage_installs_after_the_first_with_its_own_pip_arguments(tmp_path):
    spec, env = tmp_path / "tool.txt", tmp_path / "envs" / "tool"
    # python-dateutil needs six: with --no-deps it installs only because the first stage put six there.
    spec.write_text("# python: 3.11\nsix==1.16.0\n# stage: --no-deps\npython-dateutil==2.8.2\n")
    record = ensure_env(spec, env)
    assert {"six==1.16.0", "python-dateutil==2.8.2"} <= set(record["freeze"])


def test_packages_the_main_env_has_at_the_pinned_version_are_hard_linked(tmp_path):
    """The scorer envs pin the main env's torch: linked, not reinstalled (seconds instead of minutes and 6 GB)."""
    import importlib.metadata
    import sysconfig
    from pathlib import Path

    version = importlib.metadata.version("packaging")
    spec, env = tmp_path / "tool.txt", tmp_path / "env"
    spec.write_text(f"# python: 3.11\npackaging=={version}\n")
    record = ensure_env(spec, env, extra_pip_args=["--no-index"])  # nothing may come from an index
    assert record["linked_from_main"] == [f"packaging=={version}"]
    ours = Path(sysconfig.get_paths()["purelib"]) / "packaging" / "version.py"
    theirs = next(env.glob("lib/python3.11/site-packages/packaging/version.py"))
    assert ours.stat().st_ino == theirs.stat().st_ino
    out = subprocess.run([env_python(env), "-I", "-c", "import packaging; print(packaging.__version__)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == version
