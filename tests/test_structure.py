"""The house rules of the code, read from the source with ``ast`` (nothing is imported or run).

Imports point down only: ``remi/`` (the contract) <- ``retrieval/`` (the query path) <- ``index/``
(building and publishing versions) <- ``training/``, ``service/`` <- ``cli/``. ``loadtest/`` stands
apart. A rule broken here is a structural regression, whatever the other tests say. That the
serving side never imports torch or the training stack (also at run time) is
tests/test_deploy.py::test_serve_path_never_imports_the_training_stack.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A package may import its own modules and those of lower layers, never a higher or a sibling one.
LAYERS = {"remi": 0, "loadtest": 0, "retrieval": 1, "index": 2, "training": 3, "service": 3, "cli": 4}
HEAVY = {"torch"}  # only training/ (and cli/, lazily, per command) may load it


def modules(package: str) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted((REPO / package).rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def imported(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in a module, function-level ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_package_imports_only_lower_layers(package: str) -> None:
    upward = [
        f"{where(path, line)} imports {module}"
        for path, tree in modules(package)
        for line, module in imported(tree)
        if (top := module.split(".")[0]) in LAYERS and top != package and LAYERS[top] >= LAYERS[package]
    ]
    assert not upward, "imports that run back up (or sideways):\n" + "\n".join(upward)


def test_the_query_path_depends_on_the_contract_alone() -> None:
    """retrieval/ is what serving, the reindex gate and offline evaluation share: nothing above it."""
    allowed_first_party = {"remi", "retrieval"}
    bad = [
        f"{where(path, line)} imports {module}"
        for path, tree in modules("retrieval")
        for line, module in imported(tree)
        if (top := module.split(".")[0]) in HEAVY or (top in LAYERS and top not in allowed_first_party)
    ]
    assert not bad, "\n".join(bad)
