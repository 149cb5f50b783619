"""Separate, pinned Python environments for tools whose requirements clash with the main one (GenEval's detector
stack, some preference scorers). Each is a venv built from one pin file and reused while that file is unchanged.

A pin file is a pip requirements file (every line ``name==version``, optionally with ``--hash``/``--index-url``
lines) whose header names the interpreter: ``# python: 3.10``. The interpreter is ``python3.10`` on ``PATH`` or the
path in ``SIDREPRO_PYTHON_3_10``. The environment folder holds ``env.json`` (pin file hash, interpreter,
``pip freeze``), written last: its presence with a matching hash marks a complete environment.

A line ``# stage: PIP-ARGS`` starts a later install stage: the requirements below it are installed by a second
``pip install`` with those arguments, after everything above it is in place. A source package whose build imports
another one (mmcv-full compiles against the installed torch) goes in a ``# stage: --no-build-isolation`` stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic

STAMP = "env.json"
# Where environments live unless told otherwise: outside any checkout, one folder per pin file content, so that every
# clone and config on a machine (or a cluster's shared home) reuses them, as Snakemake's --conda-prefix does.
DEFAULT_ROOT = "~/.cache/sidrepro/envs"
_PYTHON = re.compile(r"^#\s*python:\s*(\d+\.\d+)\s*$", re.MULTILINE)
_STAGE = re.compile(r"^#\s*stage:(.*)$")


class EnvError(RuntimeError):
    """An environment that cannot be built, with what to do about it."""


def python_version(spec: Path) -> str:
    """The ``# python: X.Y`` header of a pin file."""
    m = _PYTHON.search(Path(spec).read_text(encoding="utf-8"))
    if m is None:
        raise EnvError(f"{spec}: no '# python: X.Y' line; add one naming the interpreter the pins were made for")
    return m.group(1)


def check_pins(spec: Path) -> None:
    """Refuse requirement lines that are not pinned to one version (the environment must be reproducible)."""
    loose = []
    for raw in Path(spec).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if "==" not in line.split(";", 1)[0]:
            loose.append(line)
    if loose:
        raise EnvError(f"{spec}: unpinned requirements {loose}; pin each to one version with '=='")


def stages(spec: Path) -> list[tuple[list[str], list[str]]]:
    """The pin file split at its ``# stage: PIP-ARGS`` lines: ``[(pip_args, requirement_lines), ...]`` in install
    order (the first stage has no extra arguments; empty stages are dropped)."""
    out: list[tuple[list[str], list[str]]] = [([], [])]
    for raw in Path(spec).read_text(encoding="utf-8").splitlines():
        m = _STAGE.match(raw.strip())
        if m:
            out.append((m.group(1).split(), []))
        elif raw.split("#", 1)[0].strip():
            out[-1][1].append(raw.strip())
    return [(args, lines) for args, lines in out if lines]


def _runs(interpreter: str) -> bool:
    try:
        return subprocess.run([interpreter, "-c", "pass"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _pyenv_python(version: str) -> str | None:
    """The newest pyenv-installed ``version.*`` interpreter that runs (``$PYENV_ROOT`` or ``~/.pyenv``)."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = sorted(root.glob(f"{version}.*/bin/python{version}"),
                   key=lambda p: int(p.parents[1].name.rsplit(".", 1)[-1]) if p.parents[1].name.rsplit(".", 1)[
                       -1].isdigit() else -1, reverse=True)
    return next((str(p) for p in found if _runs(str(p))), None)


def find_python(version: str) -> str:
    """The interpreter for ``version``: ``SIDREPRO_PYTHON_X_Y`` or ``pythonX.Y`` on ``PATH``."""
    var = f"SIDREPRO_PYTHON_{version.replace('.', '_')}"
    if os.environ.get(var):
        return os.environ[var]
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None or not _runs(found):  # a pyenv shim of a version that is installed but not selected fails
        found = _pyenv_python(version)
    if found is None:
        raise EnvError(f"Python {version} not found: install it (e.g. pyenv install {version}) or set {var} to its "
                       "interpreter")
    return found


def spec_digest(spec: Path) -> str:
    """sha256 of the pin file's bytes."""
    return hashlib.sha256(Path(spec).read_bytes()).hexdigest()


def envs_root(root: str | Path | None = None) -> Path:
    """The folder of all environments: ``root``, else ``$SIDREPRO_ENVS``, else ``~/.cache/sidrepro/envs``."""
    return Path(root or os.environ.get("SIDREPRO_ENVS") or DEFAULT_ROOT).expanduser()


def env_dir_for(spec: Path, root: str | Path | None = None) -> Path:
    """The environment folder of a pin file: ``<envs root>/<file stem>-<first 12 hex of its sha256>``."""
    return envs_root(root) / f"{Path(spec).stem}-{spec_digest(spec)[:12]}"


def env_python(env_dir: Path) -> Path:
    """The interpreter inside an environment folder."""
    return Path(env_dir) / "bin" / "python"


def read_stamp(env_dir: Path) -> dict[str, Any] | None:
    """The environment's ``env.json``, or None when it is missing or unreadable."""
    try:
        return json.loads((Path(env_dir) / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _run(cmd: list[str], what: str, log: Path | None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if log is not None:
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise EnvError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _pins(spec: Path) -> dict[str, str]:
    """``{normalised name: version}`` of the pin file's ``name==version`` lines."""
    pins = {}
    for raw in Path(spec).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = (part.strip() for part in line.split("==", 1))
            pins[re.sub(r"[-_.]+", "-", name.split("[", 1)[0]).lower()] = version
    return pins


def seed_from_current(spec: Path, env_dir: Path) -> list[str]:
    """Hard-link into ``env_dir`` every pinned package that this interpreter's environment has at the same version
    (same Python minor only): pip then sees it installed and skips it. The scorer envs share torch and its CUDA
    libraries with the main env this way: seconds and no disk instead of minutes and 6 GB. Returns what was linked;
    a package that cannot be linked completely is left to pip."""
    import importlib.metadata
    import sysconfig

    if python_version(spec) != f"{sys.version_info.major}.{sys.version_info.minor}":
        return []
    here = Path(sysconfig.get_paths()["purelib"]).resolve()
    scripts = Path(sysconfig.get_paths()["scripts"]).resolve()
    there = next((env_dir / "lib").glob("python*/site-packages"))
    pins, linked = _pins(spec), []
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if pins.get(name) != dist.version or not dist.files:
            continue
        # Console scripts (bin/) name this interpreter in their first line: not linked, the env does not need them.
        files = [f for f in ((here / f).resolve() for f in dist.files) if not f.is_relative_to(scripts)]
        if not all(f.is_relative_to(here) for f in files):
            continue  # data files elsewhere: let pip install it
        made = []
        try:
            for f in files:
                if not f.is_file():
                    continue  # a .pyc that was never written
                target = there / f.relative_to(here)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(f, target)
                made.append(target)
        except OSError:  # another filesystem, a clash: undo and let pip do it
            for target in made:
                target.unlink(missing_ok=True)
            continue
        linked.append(f"{name}=={dist.version}")
    return linked


def ensure_env(spec: Path, env_dir: Path, *, log: Path | None = None, extra_pip_args: list[str] | None = None
               ) -> dict[str, Any]:
    """Build ``env_dir`` from the pin file ``spec`` unless it already holds a complete environment of the same pins;
    return its ``env.json`` record. A failed build leaves no stamp (the next call starts over, from a clean folder)."""
    spec, env_dir = Path(spec), Path(env_dir)
    check_pins(spec)
    digest = spec_digest(spec)
    stamp = read_stamp(env_dir)
    if stamp is not None and stamp.get("spec_sha256") == digest and env_python(env_dir).exists():
        return stamp
    version = python_version(spec)
    interpreter = find_python(version)
    if env_dir.exists():
        shutil.rmtree(env_dir)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    _run([interpreter, "-m", "venv", str(env_dir)], f"creating a Python {version} venv", log)
    py = str(env_python(env_dir))
    seeded = seed_from_current(spec, env_dir)
    parts = stages(spec)
    for n, (args, lines) in enumerate(parts):
        req = spec
        if len(parts) > 1:  # one requirements file per stage, inside the (disposable) environment folder
            req = env_dir / f".stage-{n}.txt"
            req.write_text("\n".join(lines) + "\n", encoding="utf-8")
        _run([py, "-m", "pip", "install", "--quiet", "--no-input", "-r", str(req), *args, *(extra_pip_args or [])],
             f"installing {spec}" + (f" (stage {n + 1} of {len(parts)})" if len(parts) > 1 else ""), log)
    _run([py, "-m", "pip", "check"], f"pip check in {env_dir}", log)
    record = {"spec": str(spec), "spec_sha256": digest, "python": version, "interpreter": interpreter,
              "freeze": _run([py, "-m", "pip", "freeze"], "pip freeze", log).split(),
              "linked_from_main": seeded, "seconds": round(time.time() - start, 1)}
    write_json_atomic(env_dir / STAMP, record)
    return record
