"""The house rules of the code, read from the source with ``ast`` (nothing is imported or run).

Imports point down only: ``remi/`` (the contract) <- ``retrieval/`` (the query path) <- ``index/``
(building and publishing versions) <- ``training/``, ``service/`` <- ``cli/``. ``loadtest/`` stands
apart. A rule broken here is a structural regression, whatever the other tests say. That the
serving side never imports torch or the training stack (also at run time) is
tests/test_deploy.py::test_serve_path_never_imports_the_training_stack.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A package may import its own modules and those of lower layers, never a higher or a sibling one.
LAYERS = {"remi": 0, "loadtest": 0, "retrieval": 1, "index": 2, "training": 3, "service": 3, "cli": 4}
HEAVY = {"torch"}  # only training/ (and cli/, lazily, per command) may load it
PRODUCT = ["remi", "retrieval", "index", "service"]  # the packages a deployment runs


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


# ------------------------------------------------------------------------------------ functions

MAX_FUNCTION_LINES = 80  # a function longer than a screen does several things: name them


@pytest.mark.parametrize("package", ["service", "retrieval"])
def test_no_function_is_longer_than_a_screen(package: str) -> None:
    long = [
        f"{where(path, node.lineno)} {node.name}: {length} lines"
        for path, tree in modules(package)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(long)


# ------------------------------------------------------------------------------ private names


@pytest.mark.parametrize("package", PRODUCT)
def test_no_module_imports_another_modules_private_names(package: str) -> None:
    """``from x import _name`` across modules: what another module needs is public, or it is in the wrong place."""
    private = [
        f"{where(path, node.lineno)} takes {alias.name} from {node.module}"
        for path, tree in modules(package)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not private, "\n".join(private)


# ------------------------------------------------------------------------- the item-row offset

# Item index 0 is the padding, so FAISS row r holds item index r + 1: remi/contract.py's
# ItemVocabulary is the one place that adds or subtracts that 1 (rows_to_indices, indices_to_rows,
# results_to_rows for -1-padded search results, row_of for one index). Elsewhere a "+ 1" or "- 1"
# on something named like an id, an index or a row is the offset done by hand.
ITEM_NAMES = {"id", "ids", "index", "indices", "row", "rows", "pool", "found", "merged", "items", "one", "popular"}
TO_ARRAY = {"asarray", "array", "int"}  # np.asarray(indices) - 1, int(index) - 1: still the same value


def root_name(node: ast.expr) -> str | None:
    """The variable an operand is read from: ``pool``, ``one[0, 0]``, ``np.asarray(indices)``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript | ast.Starred):
        return root_name(node.value)
    if isinstance(node, ast.Call) and node.args:
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        return root_name(node.args[0]) if func in TO_ARRAY else None
    return None


def test_the_item_row_offset_lives_in_the_contract_alone() -> None:
    by_hand = [
        f"{where(path, node.lineno)} {ast.unparse(node)}"
        for package in [*PRODUCT, "training", "cli", "loadtest"]
        for path, tree in modules(package)
        if path != REPO / "remi" / "contract.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub)
        for operand, other in ((node.left, node.right), (node.right, node.left))
        if isinstance(other, ast.Constant) and other.value == 1 and root_name(operand) in ITEM_NAMES
    ]
    # np.where(x >= 0, ItemVocabulary.indices_to_rows(x), -1): results_to_rows says it
    guarded = [
        f"{where(path, node.lineno)} {ast.unparse(node)}"
        for package in [*PRODUCT, "training", "cli", "loadtest"]
        for path, tree in modules(package)
        if path != REPO / "remi" / "contract.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "where"
        and any(isinstance(a, ast.Call) and getattr(a.func, "attr", None) == "indices_to_rows" for a in node.args)
    ]
    assert not by_hand + guarded, "use remi.contract.ItemVocabulary's conversions:\n" + "\n".join(by_hand + guarded)


# The word "issue" followed by a number (with a section, or hyphenated) cites the project's tracker,
# which a reader of the repository cannot open. A decision is explained in the repository's own docs
# and cited by its anchor (docs/operations.md#..., docs/remi.md#a7-defaults, docs/results.md#...);
# "an issue with X" is fine.
TRACKER_REFERENCE = re.compile(r"\bissues?[ -]#?\d+", re.IGNORECASE)
SCANNED_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".sh", ".json", ".lua", ".cfg", ".ini"}


def scanned_files() -> list[Path]:
    """Every file of the checkout (tracked or new, not ignored) a reader reads as code, docs or config.

    Recorded results JSON (benchmarks/results/, studies/results/) is left out: it is the raw record
    of a run (its command, notes and settings as they were), data rather than prose, and rewriting
    it would change what was recorded; the Markdown reports beside it are read as docs and are in.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], capture_output=True, text=True, cwd=REPO
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    out = []
    for name in sorted(set(listed.stdout.splitlines())):
        path = REPO / name
        text_like = path.suffix in SCANNED_SUFFIXES or "Dockerfile" in path.name or name == ".ci/run"
        if not text_like or not path.is_file():
            continue
        if path.suffix == ".json" and "results" in path.parts:
            continue
        out.append(path)
    return out


def test_no_reference_to_the_issue_tracker() -> None:
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}"
        for path in scanned_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if TRACKER_REFERENCE.search(line)
    ]
    assert not found, "cite the docs section that explains it (docs/<file>.md#<anchor>) instead:\n" + "\n".join(found)


def test_the_tracker_rule_tells_a_reference_from_the_word() -> None:
    word = "issue"  # spelled apart, so that this file passes its own rule
    for cited in (
        f"({word} 23 A2)",
        f"{word} 11 §4",
        f"the pre-{word}-11 code",
        f"{word.title()} 12 section 1",
        f"{word}s 9, 12",
    ):
        assert TRACKER_REFERENCE.search(cited), cited
    for prose in ("an issue with the lock", "issue a 503", "no issue here: 3 retries", "tissue 5"):
        assert not TRACKER_REFERENCE.search(prose), prose
