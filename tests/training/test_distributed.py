"""Distributed data-parallel training: 2 CPU processes (torchrun + DDP over gloo) vs one, and two
"nodes" on localhost (two torchrun launchers meeting at a c10d rendezvous) vs 2 processes on one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from loadtest.server import free_port
from training.distributed import Ranks
from training.runs import load_run

# one thread per process everywhere, so every run below does its float sums in the same order
ARGS = ["--scheme", "sampled", "--max-steps", "120", "--eval-every", "60", "--dim", "16", "--batch-size", "64",
        "--negatives", "256", "--seed", "3", "--no-progress", "--threads", "1"]  # fmt: skip
RUN_FILES = {"config.json", "item_ids.txt", "metrics.json", "metrics.jsonl", "model.pt"}


def remi_train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli", "train", "--data", str(data), "--out", str(out), *ARGS, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def runs(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("ddp")
    single = remi_train(synth_csv, base / "single")
    assert single.returncode == 0, single.stderr[-2000:]
    double = remi_train(synth_csv, base / "double", "--nproc", "2")
    assert double.returncode == 0, double.stderr[-2000:]
    return base / "single", base / "double"


def test_two_processes_write_one_valid_run_directory(runs: tuple[Path, Path]) -> None:
    _, double = runs
    metrics = json.loads((double / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 120
    assert len((double / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone logs
    cfg, model = load_run(double)
    assert model.n_items > 0 and cfg.batch_size == 64


def test_two_processes_match_one_process_with_the_same_global_batch(runs: tuple[Path, Path]) -> None:
    """Same global batch and shared negatives, sharded over ranks: the same training, up to float
    reduction order."""
    single, double = (json.loads((run / "metrics.json").read_text()) for run in runs)
    for part in ("valid", "test"):
        for key, value in single[part].items():
            assert double[part][key] == pytest.approx(value, abs=2e-3), (part, key)
    assert double["routing"]["effective_items"] == pytest.approx(single["routing"]["effective_items"], rel=1e-3)


def test_early_stop_reaches_every_rank(synth_csv: Path, tmp_path: Path) -> None:
    """Rank 0 decides to stop; the other rank follows instead of waiting forever in an all-reduce."""
    proc = remi_train(synth_csv, tmp_path / "r", "--nproc", "2", "--patience", "1", "--lr", "0.3",
                      "--max-steps", "2000", "--eval-every", "20")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["steps"] < 2000


def test_batch_that_does_not_split_evenly_is_a_clear_error(synth_csv: Path, tmp_path: Path) -> None:
    proc = remi_train(synth_csv, tmp_path / "r", "--nproc", "2", "--batch-size", "63")
    assert proc.returncode != 0 and "must divide evenly over 2 processes" in proc.stderr


def torchrun_node(endpoint: str, run_id: str, data: Path, out: Path, *rdzv_conf: str) -> subprocess.Popen[str]:
    """One "node": a torchrun launcher with 1 worker, joining a 2-node c10d rendezvous at ``endpoint``.

    --node-rank is left out: the c10d backend ignores it and ranks the nodes itself.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
           *(["--rdzv-conf", ",".join(rdzv_conf)] if rdzv_conf else []),
           "-m", "cli", "--log-level", "INFO", "train", "--data", str(data), "--out", str(out), *ARGS]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def two_nodes(data: list[Path], out: Path, timeout: float = 120) -> list[tuple[int, str, str]]:
    """Two nodes on 127.0.0.1 (launcher i reads data[i]); (exit code, stdout, stderr) of each launcher.

    A launcher still running after ``timeout`` (a hang) fails the test and is killed with the other.
    """
    endpoint, run_id = f"127.0.0.1:{free_port()}", f"remi-test-{uuid.uuid4().hex[:8]}"
    nodes = [torchrun_node(endpoint, run_id, path, out, "join_timeout=60") for path in data]
    try:
        results = []
        for node in nodes:
            stdout, stderr = node.communicate(timeout=timeout)
            results.append((node.returncode, stdout, stderr))
        return results
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()


@pytest.fixture(scope="module")
def nodes_run(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, str, str]]]:
    out = tmp_path_factory.mktemp("nodes") / "run"
    results = two_nodes([synth_csv, synth_csv], out)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    return out, results


def test_two_nodes_write_the_run_folder_once_and_complete(nodes_run: tuple[Path, list[tuple[int, str, str]]]) -> None:
    out, results = nodes_run
    assert {path.name for path in out.iterdir()} == RUN_FILES
    assert [path.name for path in out.parent.iterdir()] == ["run"]  # no second or half-written folder beside it
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 120
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # global rank 0 alone logs evaluations
    starts = [json.loads(line) for _, _, err in results for line in err.splitlines() if '"train start"' in line]
    assert sorted(start["rank"] for start in starts) == [0, 1]  # one worker per node, ranked by the rendezvous
    assert [start["local_rank"] for start in starts] == [0, 0]
    assert sum('"train done"' in err for _, _, err in results) == 1  # one rank finished the run folder
    assert sum('"test"' in stdout for _, stdout, _ in results) == 1  # one summary printed


def test_two_nodes_train_exactly_as_two_processes_on_one_machine(
    runs: tuple[Path, Path], nodes_run: tuple[Path, list[tuple[int, str, str]]]
) -> None:
    """Same seed, global batch and shards; a gloo all-reduce of two values is a+b either way, and
    one thread per process: the launch path does not enter the arithmetic, so the weights are equal."""
    (_, one_machine), (two_machines, _) = runs, nodes_run
    weights = [torch.load(run / "model.pt", weights_only=True) for run in (one_machine, two_machines)]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (one_machine, two_machines)]
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["valid"] == metrics[1]["valid"]


def test_a_node_that_cannot_reach_the_rendezvous_fails_within_its_timeout(synth_csv: Path, tmp_path: Path) -> None:
    """A worker node (not the store's host) pointed at an endpoint nothing listens on gives up after
    read_timeout with an error naming the endpoint, instead of waiting forever."""
    port = free_port()
    started = time.monotonic()
    node = torchrun_node(f"127.0.0.1:{port}", "remi-test-unreachable", synth_csv, tmp_path / "run",
                         "is_host=false", "read_timeout=3")  # fmt: skip
    try:
        _, stderr = node.communicate(timeout=60)  # a hang fails the test here
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert node.returncode != 0 and time.monotonic() - started < 45
    assert "RendezvousConnectionError" in stderr
    assert f"timed out after 3000ms while trying to connect to (127.0.0.1, {port})" in stderr
    assert not (tmp_path / "run").exists()


def test_nodes_whose_data_differs_refuse_to_train(synth_csv: Path, tmp_path: Path) -> None:
    """Per-node copies of the data must be the same prepared data, or the shards would be of different
    users and items: both nodes stop with the same clear error, and no run folder appears."""
    frame = pd.read_csv(synth_csv)
    stale = tmp_path / "stale.csv"
    frame[frame["user_id"] != frame["user_id"].iloc[-1]].to_csv(stale, index=False)  # one user fewer
    results = two_nodes([synth_csv, stale], tmp_path / "run")
    for code, _, stderr in results:
        assert code != 0 and "ranks disagree on the prepared data" in stderr, stderr[-3000:]
    assert not (tmp_path / "run").exists()


def test_a_rank_uses_the_gpu_of_its_local_rank_on_its_node() -> None:
    ranks = Ranks(rank=5, world=8, local=1)  # node 1 of 2 nodes x 4 GPUs
    assert ranks.device("cuda") == torch.device("cuda", 1)
    assert ranks.device("cpu") == torch.device("cpu")


def test_gpu_ranks_send_gradients_over_nccl_and_their_agreements_over_gloo() -> None:
    """Ranks.agree / check_same send CPU tensors and objects, which an nccl-only group refuses."""
    assert Ranks.backend("cuda", cuda_available=True) == "cpu:gloo,cuda:nccl"
    assert Ranks.backend("cuda", cuda_available=False) == "gloo"
    assert Ranks.backend("cpu", cuda_available=True) == "gloo"


def test_nproc_under_torchrun_is_a_clear_error(synth_csv: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "cli", "train", "--data", str(synth_csv), "--out", str(tmp_path / "r"), "--nproc", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "WORLD_SIZE": "2"})
    assert proc.returncode != 0 and "use its --nproc-per-node" in proc.stderr
