"""`remi demo` serves where REMI_PORT / REMI_HOST say, like `remi serve` (README.md#remi-match)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cli.demo import serve_address
from loadtest.server import free_port
from remi.errors import RemiError


def test_demo_address_falls_back_to_remi_settings_then_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REMI_PORT", raising=False)
    monkeypatch.delenv("REMI_HOST", raising=False)
    assert serve_address(None, None) == ("127.0.0.1", 8000)
    monkeypatch.setenv("REMI_PORT", "8123")
    monkeypatch.setenv("REMI_HOST", "0.0.0.0")
    assert serve_address(None, None) == ("0.0.0.0", 8123)
    assert serve_address("127.0.0.2", 9000) == ("127.0.0.2", 9000)  # flags win
    monkeypatch.setenv("REMI_PORT", "eighty")
    with pytest.raises(RemiError, match="REMI_PORT"):
        serve_address(None, None)


def test_demo_serves_on_remi_port(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "demo", "--out", str(tmp_path / "demo"), "--steps", "20"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "REMI_PORT": str(port)},
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert f"http://127.0.0.1:{port}/recommend" in log.read_text()  # the printed curl line too
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
