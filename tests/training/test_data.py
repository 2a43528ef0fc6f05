from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from remi.errors import RemiError
from training.data import (
    TrainSampler,
    encode,
    eval_set,
    kcore_mask,
    load_interactions,
    read_interactions,
    read_split_file,
    split_users,
)


def _write(path: Path, rows: list[tuple], header: str = "user_id,item_id,timestamp") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_ids_are_strings_and_padding_index_is_reserved(tmp_path: Path) -> None:
    rows = [("007", "01", 3), ("007", "1", 1), ("7", "01", 2)]
    data = encode(read_interactions(_write(tmp_path / "d.csv", rows)), min_count=1)
    assert set(data.user_ids) == {"007", "7"}  # "007" and "7" stay different users
    assert set(data.item_ids) == {"01", "1"}
    vocab = data.vocabulary
    assert set(np.unique(data.items)) == set(range(vocab.first_index(), vocab.index_stop()))  # no padding index


def test_sequences_are_time_sorted_and_ties_keep_file_order(tmp_path: Path) -> None:
    rows = [("u", "c", 5), ("u", "a", 1), ("u", "b", 5), ("u", "d", 3)]
    data = encode(read_interactions(_write(tmp_path / "d.csv", rows)), min_count=1)
    seq = data.vocabulary.raw_ids_of(data.sequence(0))
    assert seq == ["a", "d", "c", "b"]  # c before b: same timestamp, file order


def test_item_ids_are_contiguous_by_descending_popularity(tmp_path: Path) -> None:
    rows = [("u1", "rare", 1), ("u1", "hot", 2), ("u2", "hot", 1), ("u3", "hot", 1), ("u2", "mid", 2), ("u3", "mid", 3)]
    data = encode(read_interactions(_write(tmp_path / "d.csv", rows)), min_count=1)
    assert list(data.item_ids) == ["hot", "mid", "rare"]


def test_kcore_iterates_until_stable() -> None:
    # u0: A B, u1: B C, u2: A A. One pass drops C then u1, leaving B with a single row.
    users = np.array([0, 0, 1, 1, 2, 2])
    items = np.array([0, 1, 1, 2, 0, 0])
    once = kcore_mask(users, items, 2, iterative=False)
    assert once.tolist() == [True, True, False, False, True, True]
    stable = kcore_mask(users, items, 2, iterative=True)
    assert stable.tolist() == [False, False, False, False, True, True]


def test_split_has_no_user_in_two_parts_and_covers_everyone(synth_csv: Path) -> None:
    data = load_interactions(synth_csv)
    split = split_users(data, seed=3)
    parts = [set(split.train), set(split.valid), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == data.n_users
    assert abs(len(split.train) / data.n_users - 0.8) < 0.01
    assert np.array_equal(split_users(data, seed=3).test, split.test)  # seeded


def test_split_file_assigns_named_users(tmp_path: Path, synth_csv: Path) -> None:
    data = load_interactions(synth_csv)
    users = list(data.user_ids)
    parts = ["train"] * 500 + ["valid"] * 50 + ["test"] * (len(users) - 550)
    pd.DataFrame({"user_id": users, "part": parts}).to_csv(tmp_path / "split.csv", index=False)
    split = read_split_file(tmp_path / "split.csv", data)
    assert len(split.train) == 500 and len(split.valid) == 50
    assert set(data.user_ids[split.valid]) == set(users[500:550])


def test_split_file_naming_unknown_users_is_an_error(tmp_path: Path, synth_csv: Path) -> None:
    data = load_interactions(synth_csv)
    pd.DataFrame({"user_id": ["nobody", data.user_ids[0]], "part": ["train", "test"]}).to_csv(
        tmp_path / "s.csv", index=False
    )
    with pytest.raises(RemiError, match="not in the data"):
        read_split_file(tmp_path / "s.csv", data)


def test_eval_cut_is_80_20_with_last_L_items_as_history(tmp_path: Path) -> None:
    rows = [("u", f"i{t}", t) for t in range(10)] + [(f"v{j}", "i0", 0) for j in range(3)]
    data = encode(read_interactions(_write(tmp_path / "d.csv", rows)), min_count=1)
    u = int(np.flatnonzero(data.user_ids == "u")[0])
    ev = eval_set(data, np.array([u]), seq_len=5)
    names = data.vocabulary.raw_ids_of
    assert names(ev.history[0][ev.mask[0]]) == ["i3", "i4", "i5", "i6", "i7"]
    assert names(ev.truth[0]) == ["i8", "i9"]


def test_sampler_targets_follow_their_history(synth_csv: Path) -> None:
    data = load_interactions(synth_csv)
    sampler = TrainSampler(data, np.arange(data.n_users), seq_len=8, seed=0)
    hist, mask, target = sampler.sample(256)
    assert hist.shape == (256, 8) and (hist[~mask] == 0).all() and (hist[mask] > 0).all()
    assert mask[:, 0].all()  # left-aligned
    assert (target > 0).all()


def _positions_of_sampled_targets(tmp_path: Path, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(position of the last history item, position of the target) in a 12-item user's sequence."""
    rows = [("u", f"i{t}", t) for t in range(12)]
    data = encode(read_interactions(_write(tmp_path / "d.csv", rows)), min_count=1)
    hist, mask, target = TrainSampler(data, np.arange(1), seq_len=20, seed=3, target_window=window).sample(4000)

    def position(codes: np.ndarray) -> np.ndarray:  # item "i7" is event 7
        return np.array([int(raw[1:]) for raw in data.vocabulary.raw_ids_of(codes)])

    return position(hist[np.arange(len(hist)), mask.sum(1) - 1]), position(target)


def test_sampler_draws_the_target_from_the_next_window_items_clipped_at_the_end(tmp_path: Path) -> None:
    last, target = _positions_of_sampled_targets(tmp_path, window=3)
    offset = target - last - 1
    assert set(offset.tolist()) == {0, 1, 2}
    assert (target <= 11).all()
    assert (offset[last == 10] == 0).all()  # the last cut has only one item after it
    assert set(offset[last == 9].tolist()) == {0, 1}


def test_sampler_window_one_is_the_next_item(tmp_path: Path) -> None:
    last, target = _positions_of_sampled_targets(tmp_path, window=1)
    assert (target == last + 1).all()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("user_id,item_id\nu,i\n", "missing column"),
        ("user_id,item_id,timestamp\nu,i,yesterday\n", "timestamp must be an integer"),
        ("user_id,item_id,timestamp\n", "no interactions"),
        ("", "empty"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(RemiError, match=message):
        read_interactions(path)


def test_empty_after_filtering_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RemiError, match="no interactions left"):
        encode(read_interactions(_write(tmp_path / "d.csv", [("u", "i", 1)])), min_count=5)


def test_too_small_to_split_is_an_error(tmp_path: Path) -> None:
    rows = [(f"u{j}", "i", t) for j in range(3) for t in range(5)]
    data = encode(read_interactions(_write(tmp_path / "d.csv", rows)), min_count=1)
    with pytest.raises(RemiError, match="too small to split"):
        split_users(data)
