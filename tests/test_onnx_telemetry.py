"""onnxruntime's telemetry is turned off before any inference session is created."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from remi.artifacts import UserTower
from remi.contract import ArtifactError


def test_user_tower_turns_onnxruntime_telemetry_off_before_creating_a_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_disable = ort.disable_telemetry_events
    real_session = ort.InferenceSession

    def disable() -> None:
        calls.append("disable_telemetry")
        real_disable()

    def session(*args: object, **kwargs: object) -> object:
        calls.append("session")
        return real_session(*args, **kwargs)

    monkeypatch.setattr(ort, "disable_telemetry_events", disable)
    monkeypatch.setattr(ort, "InferenceSession", session)
    bad = tmp_path / "user_tower.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ArtifactError):
        UserTower(bad)
    assert calls == ["disable_telemetry", "session"]


def test_every_inference_session_in_the_project_goes_through_the_telemetry_switch() -> None:
    root = Path(__file__).resolve().parents[1]
    creators = [
        p.relative_to(root).as_posix()
        for folder in ("remi", "retrieval", "index", "service", "training", "cli")
        for p in (root / folder).rglob("*.py")
        if "InferenceSession(" in p.read_text()
    ]
    assert creators == ["remi/artifacts.py"], "a new session creator must call quiet_onnxruntime() first"
