"""The `remi` command as a user runs it: a real subprocess, exit codes and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def remi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


def test_synth_train_evaluate_round_trip_prints_the_popularity_baseline(tmp_path: Path) -> None:
    assert remi("data", "synth", "--out", str(tmp_path / "d"), "--users", "300", "--items", "200").returncode == 0
    data = tmp_path / "d" / "interactions.csv.gz"
    proc = remi(
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--scheme",
        "remi",
        "--max-steps",
        "100",
        "--eval-every",
        "50",
        "--dim",
        "16",
        "--negatives",
        "64",
        "--lam",
        "100",
        "--beta",
        "1.0",
        "--no-ihn-detach",
    )
    assert proc.returncode == 0, proc.stderr
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    printed = json.loads(proc.stdout)  # the popularity baseline is printed beside the model's metrics
    assert list(printed)[:2] == ["test", "popularity_test"]
    assert printed["popularity_test"] == pytest.approx(trained["popularity_test"])
    evaluated = json.loads(remi("evaluate", "--run", str(tmp_path / "run")).stdout)
    assert evaluated["test"] == pytest.approx(trained["test"], abs=1e-6)


def test_synth_rows_writes_a_taobao_shaped_parquet_that_trains(tmp_path: Path) -> None:
    proc = remi("data", "synth", "--out", str(tmp_path / "d"), "--rows", "20000", "--format", "parquet", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    data = tmp_path / "d" / "interactions.parquet"
    assert proc.stdout.strip() == str(data) and (tmp_path / "d" / "topics.json").is_file()
    import pyarrow.parquet as pq

    table = pq.read_table(data)
    assert 15_000 < table.num_rows < 25_000 and len(set(table.column("user_id").to_pylist())) == 200
    run = tmp_path / "r"
    proc = remi("train", "--data", str(data), "--scheme", "sampled", "--min-count", "2", "--max-steps", "20",
                "--eval-every", "20", "--dim", "8", "--out", str(run))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (run / "metrics.json").is_file()


def test_train_accepts_a_config_file_and_flags_override_it(tmp_path: Path, synth_csv: Path) -> None:
    (tmp_path / "cfg.json").write_text(
        json.dumps({"train": {"scheme": "ihn", "beta": 0.3, "dim": 16, "max_steps": 40}})
    )
    proc = remi(
        "train",
        "--config",
        str(tmp_path / "cfg.json"),
        "--data",
        str(synth_csv),
        "--out",
        str(tmp_path / "r"),
        "--max-steps",
        "20",
        "--eval-every",
        "10",
    )
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (cfg["scheme"], cfg["beta"], cfg["dim"], cfg["max_steps"]) == ("ihn", 0.3, 16, 20)


def test_help_documents_every_train_flag() -> None:
    out = remi("train", "--help").stdout
    for flag in (
        "--data",
        "--model",
        "--scheme",
        "--beta",
        "--lam",
        "--max-steps",
        "--max-minutes",
        "--eval-every",
        "--seed",
        "--seq-len",
        "--interests",
        "--dim",
        "--split-file",
        "--config",
    ):
        assert flag in out


def _csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("make_data", "needle"),
    [
        (lambda d: str(d / "missing.csv"), "not found"),
        (lambda d: _csv(d / "cols.csv", "user_id,item_id\nu,i\n"), "missing column"),
        (lambda d: _csv(d / "ts.csv", "user_id,item_id,timestamp\nu,i,1.5\n"), "timestamp must be an integer"),
        (lambda d: _csv(d / "tiny.csv", "user_id,item_id,timestamp\nu,i,1\nu,j,2\n"), "no interactions left"),
        (
            lambda d: _csv(
                d / "few.csv",
                "user_id,item_id,timestamp\n" + "".join(f"u{u},i{k},{k}\n" for u in range(5) for k in range(6)),
            ),
            "too small to split",
        ),
    ],
)
def test_bad_data_gives_a_one_line_error_and_nonzero_exit(tmp_path: Path, make_data, needle: str) -> None:
    _assert_one_line_error(remi("train", "--data", make_data(tmp_path), "--out", str(tmp_path / "run")), needle)


def test_split_file_with_unknown_users_is_a_one_line_error(tmp_path: Path, synth_csv: Path) -> None:
    pd.DataFrame({"user_id": ["ghost"], "part": ["test"]}).to_csv(tmp_path / "split.csv", index=False)
    proc = remi(
        "train", "--data", str(synth_csv), "--split-file", str(tmp_path / "split.csv"), "--out", str(tmp_path / "r")
    )
    _assert_one_line_error(proc, "not in the data")


def test_bad_setting_names_the_field(tmp_path: Path, synth_csv: Path) -> None:
    proc = remi("train", "--data", str(synth_csv), "--out", str(tmp_path / "r"), "--scheme", "bogus")
    _assert_one_line_error(proc, "scheme")


def test_evaluate_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    _assert_one_line_error(remi("evaluate", "--run", str(tmp_path)), "not a run directory")


def test_demo_generates_data_trains_and_prints_metrics(tmp_path: Path) -> None:
    proc = remi("demo", "--out", str(tmp_path), "--steps", "60", "--no-serve")
    assert proc.returncode == 0, proc.stderr
    assert "recall@50" in proc.stdout and "popularity" in proc.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert "curl -s -X POST http://127.0.0.1:8000/recommend" in proc.stdout
    from retrieval.store import load_current

    assert load_current(tmp_path / "index").artifacts.manifest.backbone == "comirec-sa"


def test_readme_documents_every_setting_with_its_default() -> None:
    from cli.options import settings_table
    from index.params import IndexSettings
    from service.config import ServiceSettings
    from training.config import TrainConfig

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for cls, prefix in ((ServiceSettings, "REMI_"), (TrainConfig, "REMI_TRAIN_"), (IndexSettings, "REMI_INDEX_")):
        for name, field in cls.model_fields.items():
            default = "(set)" if hasattr(field.default, "get_secret_value") else field.default
            assert f"| `{prefix}{name.upper()}` | `{default}` |" in readme, name
        assert settings_table(cls) in readme, f"README: regenerate the {cls.__name__} table with settings_table()"


_TORCH_PROBE = """
import runpy, sys
sys.argv = ["remi", *sys.argv[1:]]
try:
    runpy.run_module("cli", run_name="__main__")
except SystemExit as exit:
    print(f"exit={exit.code} torch_imported={'torch' in sys.modules}")
"""


def test_train_with_a_missing_data_file_fails_at_once_without_importing_torch(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    args = ["train", "--data", str(missing), "--out", str(tmp_path / "run")]
    probe = subprocess.run([sys.executable, "-c", _TORCH_PROBE, *args], capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().endswith("torch_imported=False"), (probe.stdout, probe.stderr)
    assert "exit=0" not in probe.stdout
    proc = remi(*args)
    _assert_one_line_error(proc, str(missing))
    assert not (tmp_path / "run").exists()


def test_serve_takes_its_index_root_from_remi_index_root_without_the_flag(tmp_path: Path) -> None:
    root = tmp_path / "from-env"
    env = {**__import__("os").environ, "REMI_INDEX_ROOT": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--port", "0"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc, f"index root {root}: no such folder")
