"""The wheel's compiled hot path passes every test the sources pass.

``uv run pytest`` runs the sources (an editable install); users of a wheel run the modules that
``hatch_build.py`` compiles with mypyc. This test builds that wheel and runs the whole suite again
against it, in a child pytest whose ``PYTHONPATH`` puts the unpacked wheel first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from benchmarks.build import ROOT, imported_hot_path, is_compiled_from, wheel_tree

_INNER = "TESTING_COMPILED_BASTION"  # not BASTION_*: settings reject unknown ones


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get(_INNER) == "1", reason="already testing the compiled build")
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the wheel with")
def test_the_compiled_wheel_passes_the_whole_suite() -> None:
    """Build the wheel (compiled), check it is what a process imports, then run the suite on it."""
    tree = wheel_tree()
    env = {**os.environ, "PYTHONPATH": str(tree), _INNER: "1"}
    imported = imported_hot_path(env)
    assert is_compiled_from(imported, tree), imported
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "tests"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert 0 == result.returncode, result.stdout[-6000:] + result.stderr[-2000:]
