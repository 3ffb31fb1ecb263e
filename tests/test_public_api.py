"""The public surface: curated, sorted, complete, importable, and cheap to import."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import version

import pytest

import bastion

PUBLIC_MODULES = [
    "bastion",
    "bastion.auth",
    "bastion.cache",
    "bastion.compression",
    "bastion.context",
    "bastion.events",
    "bastion.exceptions",
    "bastion.health",
    "bastion.problem",
    "bastion.protection",
    "bastion.ratelimit",
    "bastion.settings",
    "bastion.stores",
    "bastion.testing",
    "bastion.types",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    """Every public module declares a sorted __all__ whose names all resolve."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert sorted(exported) == exported
    for member in exported:
        assert getattr(module, member) is not None


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_complete(name: str) -> None:
    """Public classes and functions defined in a module are exported by it."""
    module = importlib.import_module(name)
    defined = {
        attribute
        for attribute, value in vars(module).items()
        if not attribute.startswith("_")
        and getattr(value, "__module__", None) == name
        and (isinstance(value, type) or callable(value))
    }
    assert set() == defined - set(module.__all__)


def test_version_comes_from_the_package_metadata() -> None:
    """bastion.__version__ is the installed distribution's version."""
    assert version("bastion") == bastion.__version__


def test_import_is_cheap() -> None:
    """import bastion stays under the 150 ms budget and pulls in no optional extra."""
    code = (
        "import sys, time; t = time.perf_counter(); import bastion; "
        "print(time.perf_counter() - t); "
        "print(','.join(m for m in ('redis', 'sqlalchemy', 'fastapi', 'pydantic') "
        "if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    elapsed, loaded = float(output[0]), output[1]
    assert elapsed < 0.150
    assert "" == loaded
