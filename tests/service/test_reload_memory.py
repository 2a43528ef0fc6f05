"""A reload hands the replaced version's memory back to the kernel (the soak: docs/results.md#soak).

glibc keeps freed heap inside the process unless ``malloc_trim`` runs after the free. The trim
used to run only at the end of loading the new version, while the old engine was still being
served, so nothing the old one freed was handed back: under load each worker's RSS stayed one
version higher after its first reload (+37 MiB of 235 at 20k items, flat over more reloads: a
plateau, not a leak; benchmarks/results/soak_short.md). Trimming right after the swap is not
enough either: a request in flight still holds the old engine then.
"""

from __future__ import annotations

import asyncio
import shutil
import weakref
from pathlib import Path
from typing import Any

import pytest

import service.versions
from index.publish import reindex
from retrieval.engine import Engine
from service.config import ServiceSettings
from service.versions import Versions
from tests.service.tiny_model import TinyModel


async def _wait_for(check: Any, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return bool(check())


def _reload(root: Path, monkeypatch: pytest.MonkeyPatch, new_from: Path | None, in_flight: bool) -> list[bool]:
    """Whether the replaced engine was gone at each heap trim during and after one reload: of a new
    version reindexed from ``new_from``, or a forced reload of the same one (None). ``in_flight``: a
    request holds the old engine across the swap, and ends later."""
    versions = Versions(ServiceSettings(index_root=root, poll_seconds=0))
    trims: list[bool] = []

    async def scenario() -> None:
        await versions.refresh()
        held: Engine | None = versions.engine
        old = weakref.ref(held)
        monkeypatch.setattr(service.versions, "release_free_memory", lambda: trims.append(old() is None))
        if not in_flight:
            held = None
        if new_from is not None:
            reindex(new_from, root, kind="flat", force=True)
        result = await versions.refresh(force=new_from is None)
        assert result["changed"], result
        if in_flight:
            await asyncio.sleep(0.2)
            assert old() is not None and True not in trims  # still served to the request in flight
            held = None  # the request ends
        assert old() is None  # nothing else holds the replaced engine
        await _wait_for(lambda: True in trims)

    asyncio.run(scenario())
    return trims


@pytest.fixture
def root(tiny_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "root"
    shutil.copytree(tiny_root, copy)
    return copy


def test_a_forced_reload_trims_the_heap_after_the_old_engine_is_gone(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert True in _reload(root, monkeypatch, None, in_flight=False)


def test_a_reload_of_a_new_version_trims_the_heap_after_the_old_engine_is_gone(
    tiny_model: TinyModel, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert True in _reload(root, monkeypatch, tiny_model.artifacts, in_flight=False)


def test_an_old_engine_held_by_a_request_in_flight_is_trimmed_when_the_request_ends(
    tiny_model: TinyModel, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert True in _reload(root, monkeypatch, tiny_model.artifacts, in_flight=True)
