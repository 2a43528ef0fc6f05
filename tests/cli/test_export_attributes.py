"""`remi export --item-attributes` as a user runs it: attributes attached and reported, bad tables
refused in one line before any export work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from remi.artifacts import load_artifacts
from remi.contract import RUN_ITEM_IDS


def remi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600)


def test_export_attaches_attributes_and_counts_unknown_ids(trained_run: Path, tmp_path: Path) -> None:
    ids = (trained_run / RUN_ITEM_IDS).read_text().split()
    table = tmp_path / "items.csv"
    rows = [f"{item},{'odd' if i % 2 else 'even'},{i}.5" for i, item in enumerate(ids[:100])]
    table.write_text("item_id,parity,price\n" + "\n".join(rows + ["not-an-item,even,1", "also-unknown,odd,2"]) + "\n")
    out = tmp_path / "artifacts"
    proc = remi("export", "--run", str(trained_run), "--out", str(out), "--item-attributes", str(table))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["item_attributes"]
    assert summary["unknown_ids"] == 2 and summary["items_without_row"] == len(ids) - 100
    assert summary["kinds"] == {"parity": "categorical", "price": "numeric"}
    attributes = load_artifacts(out).attributes
    assert attributes is not None and attributes.column("price")[1] == 1.5


def test_export_refuses_duplicate_ids_in_one_line_before_exporting(trained_run: Path, tmp_path: Path) -> None:
    ids = (trained_run / RUN_ITEM_IDS).read_text().split()
    table = tmp_path / "items.csv"
    table.write_text(f"item_id,colour\n{ids[0]},red\n{ids[1]},blue\n{ids[0]},green\n")
    out = tmp_path / "artifacts"
    proc = remi("export", "--run", str(trained_run), "--out", str(out), "--item-attributes", str(table))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(table) in lines[0] and f"duplicate item id {ids[0]!r}" in lines[0], proc.stderr
    assert not out.exists()  # refused before the export began
