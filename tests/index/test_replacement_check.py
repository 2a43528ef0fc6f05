"""Reindex compares the new model with the one it replaces (docs/operations.md#reindex-cadence-and-rollback).

`remi reindex` of another model's artifacts (the 985-item demo) into the root a live server
follows used to exit 0, and within a poll every user of the real catalogue got cold-start answers
(their history items unknown to the new model) and filtered requests 422. A drastic change is now
refused without --force, naming the figures: the share of the serving catalogue the new model
keeps, the share of the serving model's sample histories it can read, the attributes it drops.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index.compat import compare_artifacts
from index.publish import reindex
from remi.contract import VERSION_ARTIFACTS, list_versions, read_current, version_dir
from remi.errors import RemiError
from tests.service.attr_model import write_attr_artifacts
from tests.service.tiny_model import N_ITEMS, write_model_folder, write_tiny_artifacts


def remi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


def model_over(out: Path, item_ids: list[str], seed: int = 1) -> Path:
    """An artifact folder of the tiny tower over ``item_ids`` (another training run)."""
    write_model_folder(out, item_ids, np.random.default_rng(seed))
    return out


@pytest.fixture
def serving(tmp_path: Path) -> tuple[Path, str]:
    """A root whose `current` serves the tiny model (items item-000 .. item-039)."""
    root = tmp_path / "root"
    art = write_tiny_artifacts(tmp_path / "serving-artifacts").artifacts
    return root, reindex(art, root, kind="flat").index_version


def test_reindex_refuses_an_unrelated_model_naming_the_figures(serving: tuple[Path, str], tmp_path: Path) -> None:
    root, good = serving
    other = model_over(tmp_path / "other", [f"demo-{i:04d}" for i in range(60)])
    with pytest.raises(RemiError) as refused:
        reindex(other, root, kind="flat")
    message = str(refused.value)
    assert "\n" not in message and "--force" in message
    assert "0.0% of the 40 items" in message and "0.0% of the 16 sample histories" in message
    assert read_current(root) == good and list_versions(root) == [good]
    forced = reindex(other, root, kind="flat", force=True)
    assert read_current(root) == forced.index_version


def test_the_cli_refuses_an_unrelated_model_with_one_line_exit_2_and_force_overrides(
    serving: tuple[Path, str], tmp_path: Path
) -> None:
    root, good = serving
    other = model_over(tmp_path / "other", [f"demo-{i:04d}" for i in range(60)])
    proc = remi("reindex", "--artifacts", str(other), "--root", str(root), "--kind", "flat")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "catalogue" in lines[0], proc.stderr
    assert read_current(root) == good
    forced = remi("reindex", "--artifacts", str(other), "--root", str(root), "--kind", "flat", "--force")
    assert forced.returncode == 0, forced.stderr
    assert read_current(root) != good


def test_a_retrain_over_the_same_or_a_grown_catalogue_is_accepted(serving: tuple[Path, str], tmp_path: Path) -> None:
    root, good = serving
    same = [f"item-{i:03d}" for i in range(N_ITEMS)]
    retrained = reindex(model_over(tmp_path / "retrained", same, seed=5), root, kind="flat")
    assert retrained.built and read_current(root) == retrained.index_version
    grown = [*same[5:], *[f"new-{i}" for i in range(30)]]  # 35 of 40 kept (87.5%), 30 new
    after = reindex(model_over(tmp_path / "grown", grown, seed=6), root, kind="flat")
    assert after.built and read_current(root) == after.index_version


def test_the_thresholds_are_settings_and_flags(serving: tuple[Path, str], tmp_path: Path) -> None:
    root, good = serving
    kept = [f"item-{i:03d}" for i in range(28)] + [f"new-{i}" for i in range(12)]  # 70% of the catalogue
    art = model_over(tmp_path / "partial", kept)
    strict = remi("reindex", "--artifacts", str(art), "--root", str(root), "--kind", "flat",
                  "--min-catalogue-overlap", "0.8")  # fmt: skip
    assert strict.returncode == 2 and "70.0% of the 40 items" in strict.stderr and "0.8" in strict.stderr
    assert read_current(root) == good
    with pytest.raises(RemiError, match="70.0% of the 40 items"):
        reindex(art, root, kind="flat", min_catalogue_overlap=0.8)
    assert reindex(art, root, kind="flat").built  # the default (0.5) accepts a 70% overlap


def test_reindex_refuses_a_model_that_drops_item_attributes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    attr = write_attr_artifacts(tmp_path / "attr", n_items=200)
    good = reindex(attr.artifacts, root, kind="flat").index_version
    plain = model_over(tmp_path / "plain", attr.item_ids)  # same catalogue, no attributes
    with pytest.raises(RemiError) as refused:
        reindex(plain, root, kind="flat")
    assert "category" in str(refused.value) and "price" in str(refused.value) and "422" in str(refused.value)
    assert read_current(root) == good


def test_compare_artifacts_reports_the_figures_for_other_callers(serving: tuple[Path, str], tmp_path: Path) -> None:
    """The one comparison reindex runs, callable on any two artifact folders (a future `remi index sync`)."""
    root, good = serving
    grown = [f"item-{i:03d}" for i in range(10, 40)] + [f"new-{i}" for i in range(10)]
    figures = compare_artifacts(version_dir(root, good) / VERSION_ARTIFACTS, model_over(tmp_path / "g", grown))
    assert figures.old_items == 40 and figures.new_items == 40 and figures.kept_items == 30
    assert figures.catalogue_overlap == pytest.approx(0.75)
    assert 0.0 < figures.history_coverage <= 1.0 and figures.sample_histories == 16
    assert figures.lost_attributes == []
