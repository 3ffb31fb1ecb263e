"""Which build of bastion the measured processes run: the wheel users install, or the sources.

A wheel of bastion carries its per-request hot path compiled with mypyc (``hatch_build.py``); an
editable install, the one ``uv run`` uses in this checkout, runs the plain sources. By default the
benchmark measures what users get: it builds the wheel of the working tree (once per state of the
sources, cached under ``build/bench-wheel/``), unpacks it, and puts it first on the
``PYTHONPATH`` of every worker process and server it starts. ``--build source`` measures the
sources instead.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "BUILDS",
    "ROOT",
    "describe",
    "imported_hot_path",
    "is_compiled_from",
    "use_build",
    "wheel_tree",
]

ROOT = Path(__file__).resolve().parent.parent
BUILDS = ("wheel", "source")


def _sources_digest() -> str:
    """A digest of everything that goes into the wheel's code."""
    digest = hashlib.sha256()
    paths = [ROOT / "pyproject.toml", ROOT / "hatch_build.py"]
    paths += sorted((ROOT / "src").rglob("*.py"))
    for path in paths:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def wheel_tree() -> Path:
    """The unpacked compiled wheel of the current sources, built if not cached (the wheels of
    other states of the sources are removed then: one is kept)."""
    target = ROOT / "build" / "bench-wheel" / _sources_digest()
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="bastion-bench-wheel-") as directory:
        # BASTION_COMPILE=1: a wheel that silently fell back to pure Python would be measured
        # under the wrong name.
        subprocess.run(
            ["uv", "build", "--wheel", "--quiet", "-o", directory, str(ROOT)],
            check=True,
            env={**os.environ, "BASTION_COMPILE": "1"},
        )
        (wheel,) = Path(directory).glob("bastion-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    (target / ".complete").touch()
    for stale in target.parent.iterdir():  # finished wheels of earlier states of the sources
        if stale != target and (stale / ".complete").exists():
            shutil.rmtree(stale, ignore_errors=True)
    return target


def use_build(build: str) -> str:
    """Make the processes started from now on run ``build``; return how the report names it.

    Raises:
        ValueError: for an unknown build.
        subprocess.CalledProcessError: the wheel did not build.
    """
    if build == "source":
        return describe(build)
    if build != "wheel":
        raise ValueError(f"unknown build {build!r}; use one of {', '.join(BUILDS)}")
    tree = wheel_tree()
    # Servers are started with this environment; worker processes (multiprocessing's spawn)
    # take this process's sys.path instead.
    existing = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = f"{tree}{os.pathsep}{existing}" if existing else str(tree)
    sys.path.insert(0, str(tree))
    # What a started process imports, checked both ways: the editable install must not win.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        worker = pool.apply(_context_module_file)
    for found in (imported_hot_path(), worker):
        if not is_compiled_from(found, tree):
            raise RuntimeError(f"the compiled build is not what processes import: {found}")
    return describe(build)


def imported_hot_path(env: Mapping[str, str] | None = None) -> str:
    """The file ``bastion.context`` is imported from by a new interpreter with ``env``."""
    return subprocess.run(
        [sys.executable, "-c", "import bastion.context as c; print(c.__file__)"],
        env=None if env is None else dict(env),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def is_compiled_from(module_file: str, tree: Path) -> bool:
    """Whether ``module_file`` is a compiled extension module inside ``tree``."""
    return Path(module_file).is_relative_to(tree) and module_file.endswith(".so")


def _context_module_file() -> str:
    import bastion.context

    return bastion.context.__file__ or ""


def describe(build: str) -> str:
    """One line for the report."""
    if build == "wheel":
        return (
            "bastion's wheel, its per-request hot path compiled with mypyc (hatch_build.py), as "
            "`pip install bastion` gets it"
        )
    return "bastion's plain sources (an editable install; nothing compiled)"
