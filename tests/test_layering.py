"""Capabilities depend on the core and never on each other (DESIGN §5-6)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bastion"

# The core: everything depends on it, it depends on nothing of bastion outside itself.
CORE = {
    "_asgi",
    "_clock",
    "_lifespan",
    "_ops",
    "_pipeline",
    "_routes",
    "_shutdown",
    "_urls",
    "context",
    "events",
    "exceptions",
    "problem",
    "settings",
    "stores",
    "testing",
    "types",
}
# Integrators assemble capabilities: they may import anything.
INTEGRATORS = {"__init__", "__main__", "_app", "cli", "demo", "integrations"}


def top_level_unit(path: Path) -> str:
    """The core module or capability package a source file belongs to."""
    relative = path.relative_to(SRC)
    return relative.parts[0].removesuffix(".py")


def bastion_imports(path: Path) -> set[str]:
    """The bastion units a module imports (absolute imports only; relative ones are banned)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            names = [node.module or ""]
            if node.module == "bastion":
                names = [f"bastion.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "bastion" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_unit_is_classified() -> None:
    """Each top-level module or package is core, an integrator, or a capability on purpose."""
    units = {top_level_unit(path) for path in SRC.rglob("*.py")}
    assert units, "no sources found"
    unknown = {unit for unit in units if unit not in CORE | INTEGRATORS and unit.startswith("_")}
    assert set() == unknown, "private modules must be listed as core or integrator"


def test_core_never_imports_capabilities_or_integrators() -> None:
    """The core stays independent, so a capability can be used alone."""
    violations = [
        f"{path.relative_to(SRC)} imports bastion.{unit}"
        for path in SRC.rglob("*.py")
        if top_level_unit(path) in CORE
        for unit in bastion_imports(path)
        if unit not in CORE
    ]
    assert [] == violations


def test_capabilities_never_import_each_other() -> None:
    """A capability imports only the core (and itself)."""
    violations: list[str] = []
    for path in SRC.rglob("*.py"):
        unit = top_level_unit(path)
        if unit in CORE or unit in INTEGRATORS:
            continue
        violations.extend(
            f"{path.relative_to(SRC)} imports bastion.{other}"
            for other in bastion_imports(path)
            if other not in CORE and other != unit
        )
    assert [] == violations
