"""Wheel build hook: compiles bastion's per-request hot path with mypyc.

The modules every request runs through (``compiled`` in ``pyproject.toml``) are compiled to C
extension modules with mypyc, the compiler the mypy project builds mypy and black with. The
wheel keeps every ``.py`` file as well; Python imports an extension module before a source file
of the same name, so the compiled modules serve and the sources stay readable beside them.
Nothing else changes: the same source, type-checked as it is by CI, is what runs.

Editable installs (``uv sync``, ``pip install -e``) are never compiled: a developer edits the
sources and runs them, and no stale binary can shadow an edit. ``BASTION_COMPILE`` chooses for
other builds: ``0`` builds a pure-Python wheel, ``1`` requires compilation (a failure fails the
build), unset compiles when it can and falls back to pure Python with a warning (an sdist
installed where no C compiler exists).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# mypy settings for compiling, not checking (CI checks with the project's own configuration).
# The build environment holds only the build requirements, so third-party imports are unknown
# to it: mypyc treats their values as ``Any``, which costs nothing in bastion's own code.
_MYPY_CONFIG = """\
[mypy]
python_version = 3.11
ignore_missing_imports = True
follow_imports = silent
"""


class MypycBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Compile ``compiled`` (paths under ``src/``) into the wheel."""

    PLUGIN_NAME = "custom"

    _output: Path | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        choice = os.environ.get("BASTION_COMPILE", "")
        if choice == "0":
            return
        try:
            artifacts = self._compile()
        except Exception as exc:
            if choice == "1":
                raise
            warnings.warn(
                f"bastion: compiling the hot path with mypyc failed ({exc}); building a "
                "pure-Python wheel, which is slower per request (see docs/performance.md)",
                stacklevel=1,
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        for source, target in artifacts:
            build_data["force_include"][str(source)] = target

    def _compile(self) -> list[tuple[Path, str]]:
        from mypyc.build import mypycify
        from setuptools import Distribution

        root = Path(self.root)
        modules = [str(Path("src") / path) for path in self.config.get("compiled", [])]
        if not modules:
            return []
        work = Path(tempfile.mkdtemp(prefix="bastion-mypyc-"))
        config = work / "mypy.ini"
        config.write_text(_MYPY_CONFIG)
        # Private to this build, so that two builds of one tree (a test, a benchmark) never
        # share it; kept until finalize(), once the wheel holds the modules.
        output = self._output = Path(tempfile.mkdtemp(prefix="bastion-mypyc-out-"))
        previous = Path.cwd()
        os.chdir(root)  # mypyc names modules by their paths relative to the working directory
        sys.path.insert(0, str(root / "src"))
        try:
            extensions = mypycify(
                [f"--config-file={config}", *modules],
                opt_level="3",
                group_name="bastion",
                target_dir=str(work / "c"),
            )
            distribution = Distribution({"name": "bastion", "ext_modules": extensions})
            command: Any = distribution.get_command_obj("build_ext")
            command.build_lib = str(output)
            command.build_temp = str(work / "temp")
            command.ensure_finalized()
            command.run()
        finally:
            sys.path.remove(str(root / "src"))
            os.chdir(previous)
            shutil.rmtree(work, ignore_errors=True)
        return [(path, path.relative_to(output).as_posix()) for path in output.rglob("*.so")]

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._output is not None:
            shutil.rmtree(self._output, ignore_errors=True)
            self._output = None
