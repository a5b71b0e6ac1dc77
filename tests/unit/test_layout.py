"""The package's layers, as docs/architecture.md draws them: each imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import lerobot_assets

PACKAGE = Path(lerobot_assets.__file__).parent

#: layer -> what its modules must not import (top-level modules, or lerobot_assets subpackages).
FORBIDDEN = {
    "core": {"dagster", "torch", "lerobot_assets.defs", "lerobot_assets.runtime", "lerobot_assets.training",
             "lerobot_assets.cli", "lerobot_assets.testing", "lerobot_assets.definitions"},
    "defs": {"torch", "lerobot_assets.runtime.commands", "lerobot_assets.runtime.relabel", "lerobot_assets.cli",
             "lerobot_assets.training", "lerobot_assets.testing"},
    "runtime": {"torch", "lerobot_assets.cli", "lerobot_assets.training", "lerobot_assets.testing"},
    "training": {"dagster", "lerobot_assets.defs", "lerobot_assets.runtime.commands", "lerobot_assets.cli"},
    "testing": {"dagster", "torch", "deeplake", "lerobot_assets"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _violations(layer: str) -> list[str]:
    found = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            for forbidden in FORBIDDEN[layer]:
                if name == forbidden or name.startswith(forbidden + "."):
                    found.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return found


def test_layers_import_only_what_is_below_them() -> None:
    assert {layer: _violations(layer) for layer in FORBIDDEN} == {layer: [] for layer in FORBIDDEN}


def test_public_names_resolve() -> None:
    """Every name of ``lerobot_assets.__all__`` (the README's API) imports from where the package says."""
    for name in lerobot_assets.__all__:
        assert getattr(lerobot_assets, name).__name__ == name
