"""`python -m benchmarks.quality` (commands written before the quality study moved to studies/)
still runs the study, and a results path it names under benchmarks/results/ is read where the file
moved."""

from __future__ import annotations

from benchmarks.quality import moved


def test_a_moved_results_file_is_read_from_studies() -> None:
    assert moved("benchmarks/results/quality_sa_s2023.json") == "studies/results/quality_sa_s2023.json"


def test_other_arguments_pass_unchanged() -> None:
    for arg in ("--merge", "benchmarks/results/serving.json", "benchmarks/results/nowhere.json", "/tmp/x.json"):
        assert moved(arg) == arg
