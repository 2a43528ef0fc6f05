"""PackedVocabulary: the same answers and refusals as ItemVocabulary, without a Python string per id."""

from __future__ import annotations

import numpy as np
import pytest

import remi.packed_ids as packed_ids
from remi.contract import ArtifactError, ItemVocabulary, parse_item_ids
from remi.packed_ids import PackedVocabulary

IDS = ["i0", "héllo", "日本", "a-much-longer-item-id-42", "7", *[f"i{i}" for i in range(1, 3000)]]


@pytest.fixture(autouse=True)
def packed_from_small_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed_ids, "PACKED_MIN_ITEMS", 100)


def encoded(ids: list[str], final_newline: bool = True) -> bytes:
    return ("\n".join(ids) + ("\n" if final_newline else "")).encode()


@pytest.mark.parametrize("final_newline", [True, False])
def test_packed_answers_every_question_like_the_plain_vocabulary(final_newline: bool) -> None:
    packed = PackedVocabulary.from_bytes(encoded(IDS, final_newline), len(IDS), "ids.txt")
    plain = ItemVocabulary(IDS)
    assert isinstance(packed, PackedVocabulary) and len(packed) == packed.n_items == len(IDS)
    rng = np.random.default_rng(0)
    indices = rng.integers(1, len(IDS) + 1, 500)
    assert packed.raw_ids_of(indices) == plain.raw_ids_of(indices)
    assert packed.raw_ids_of(indices.tolist()) == plain.raw_ids_of(indices.tolist())
    assert [packed.raw_id(i) for i in (1, 2, 3, 4, 5)] == IDS[:5]
    asked = [IDS[i - 1] for i in indices] + ["nope", "", "i1\x00", "i1 ", "x" * 200, "日", "I1"]
    got, got_unknown = packed.indices_of(asked)
    want, want_unknown = plain.indices_of(asked)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64 and got_unknown == want_unknown == 7
    assert packed.indices_of([])[1] == 0 and len(packed.indices_of([])[0]) == 0
    assert all(packed.index_of(raw) == plain.index_of(raw) for raw in asked)
    assert ("日本" in packed) and ("nope" not in packed) and (3 not in packed)
    assert packed.raw_ids == IDS  # built on demand, for callers outside the serving path
    assert ItemVocabulary.index_of(packed, "日本") == 3  # the base class's own methods still work on it
    assert packed.table_size == plain.table_size


@pytest.mark.parametrize(
    "ids",
    [
        ["a", "b", "a", *[f"x{i}" for i in range(200)]],  # duplicate
        ["a", " b", *[f"x{i}" for i in range(200)]],  # leading space
        ["a", "b\u00a0", *[f"x{i}" for i in range(200)]],  # trailing no-break space
        ["a", "", *[f"x{i}" for i in range(200)]],  # empty line
        ["a", "b\rc", *[f"x{i}" for i in range(200)]],  # control character
    ],
)
def test_packed_refuses_exactly_what_the_plain_parser_refuses(ids: list[str]) -> None:
    data = encoded(ids)
    with pytest.raises(ArtifactError) as plain:
        parse_item_ids(data, len(ids), "ids.txt")
    with pytest.raises(ArtifactError) as packed:
        PackedVocabulary.from_bytes(data, len(ids), "ids.txt")
    assert str(packed.value) == str(plain.value)


def test_wrong_count_and_bad_utf8_are_refused_like_the_parser() -> None:
    ids = [f"x{i}" for i in range(200)]
    with pytest.raises(ArtifactError, match="holds 200 item ids, the manifest says 201"):
        PackedVocabulary.from_bytes(encoded(ids), 201, "ids.txt")
    with pytest.raises(ArtifactError, match="not UTF-8"):
        PackedVocabulary.from_bytes(encoded(ids) + b"\xff\n", 201, "ids.txt")


def test_small_catalogues_and_very_long_ids_keep_the_plain_vocabulary() -> None:
    few = [f"x{i}" for i in range(50)]
    assert type(PackedVocabulary.from_bytes(encoded(few), 50, "ids.txt")) is ItemVocabulary
    long = [f"{'y' * 100}{i}" for i in range(200)]
    assert type(PackedVocabulary.from_bytes(encoded(long), 200, "ids.txt")) is ItemVocabulary


def test_a_packed_vocabulary_is_read_only() -> None:
    packed = PackedVocabulary.from_bytes(encoded(IDS), len(IDS), "ids.txt")
    with pytest.raises(AttributeError):
        packed.raw_ids = ["a"]
