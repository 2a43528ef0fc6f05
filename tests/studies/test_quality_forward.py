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


def test_runs_of_an_earlier_results_file_are_not_trained_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from remi.contract import RUN_METRICS
    from studies.quality import still_to_run
    from studies.runner import Job

    earlier = tmp_path / "earlier.json"
    runs = [{"name": "a", "result": {}}, {"name": "b", "error": "failed"}, {"name": "c", "result": {}}]
    earlier.write_text(json.dumps({"runs": runs}))
    (tmp_path / "runs" / "c").mkdir(parents=True)
    (tmp_path / "runs" / "c" / RUN_METRICS).write_text("{}")  # trained here too: reported from here
    jobs = [Job(name, {}, {}) for name in ("a", "b", "c", "d")]
    left = still_to_run(jobs, tmp_path / "runs", [earlier])
    assert [j.name for j in left] == ["b", "c", "d"]
