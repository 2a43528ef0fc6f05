"""Interaction data: load, k-core filter, encode, split, and cut into train / eval sequences.

Everything is held as flat numpy arrays (one ``items`` array in user-major, time order plus
``offsets``), never as per-row Python objects, so preparing a million interactions takes
seconds. Item indices are contiguous after the padding index (remi.contract.ItemVocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from remi.contract import INTERACTION_COLUMNS, ItemVocabulary
from remi.errors import RemiError

REQUIRED_COLUMNS = INTERACTION_COLUMNS
SPLIT_PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class Interactions:
    """Filtered, encoded, time-ordered interactions.

    Attributes:
        user_ids: (U,) raw user ids (str: object or numpy StringDType); user index u is position u.
        item_ids: (I,) raw item ids (str) in item-index order (see :attr:`vocabulary`).
        offsets: (U + 1,) int64; user u's sequence is ``items[offsets[u]:offsets[u + 1]]``.
        items: (N,) int32 item indices (never padding), each user's rows in time order (4 bytes per
            interaction; windows cut from it are int64).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @cached_property
    def vocabulary(self) -> ItemVocabulary:
        """Raw id <-> item index <-> row of this data's items."""
        return ItemVocabulary(list(self.item_ids))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def item_popularity(self, users: np.ndarray | None = None) -> np.ndarray:
        """(table_size,) interaction counts per item index (padding counts 0), optionally over some users."""
        if users is None:
            return np.bincount(self.items, minlength=self.vocabulary.table_size)
        idx = _ranges(self.offsets[users], self.offsets[users + 1])
        return np.bincount(self.items[idx], minlength=self.vocabulary.table_size)


@dataclass(frozen=True)
class UserSplit:
    """User indices of each part; the parts are disjoint."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def part(self, name: str) -> np.ndarray:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


@dataclass(frozen=True)
class EvalSet:
    """History / ground-truth cut of evaluation users (docs/remi.md B.6).

    Attributes:
        users: (U,) user indices.
        history: (U, L) int64 item indices, left-aligned, right-padded with 0.
        mask: (U, L) bool, True on real items.
        truth: list of U int64 arrays, the last ~20% of each sequence (duplicates kept).
    """

    users: np.ndarray
    history: np.ndarray
    mask: np.ndarray
    truth: list[np.ndarray]


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for every pair, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    rep_starts = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    positions: np.ndarray = np.arange(total, dtype=np.int64) + rep_starts
    return positions


def read_interactions(path: str | Path) -> pd.DataFrame:
    """Read a ``user_id,item_id,timestamp`` CSV (optionally gzipped); ids stay strings.

    Raises RemiError with one line naming the problem for a missing file, missing columns,
    empty data or timestamps that are not integers.
    """
    path = Path(path)
    if not path.is_file():
        raise RemiError(f"data file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError as exc:
        raise RemiError(f"{path}: the file is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise RemiError(f"{path}: cannot parse as CSV ({str(exc).splitlines()[0]})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise RemiError(f"{path}: missing column(s) {', '.join(missing)}; expected header user_id,item_id,timestamp")
    df = df[list(REQUIRED_COLUMNS)]
    if len(df) == 0:
        raise RemiError(f"{path}: no interactions (only a header)")
    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    bad = ts.isna().to_numpy() | (ts.to_numpy() % 1 != 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise RemiError(
            f"{path}: timestamp must be an integer (Unix seconds); row {row + 2} has {df['timestamp'].iloc[row]!r}"
        )
    for col in ("user_id", "item_id"):
        empty = (df[col].str.len() == 0).to_numpy()
        if empty.any():
            row = int(np.flatnonzero(empty)[0])
            raise RemiError(f"{path}: empty {col} on row {row + 2}")
    return pd.DataFrame(
        {"user_id": df["user_id"].to_numpy(), "item_id": df["item_id"].to_numpy(), "timestamp": ts.astype("int64")}
    )


def kcore_mask(user_codes: np.ndarray, item_codes: np.ndarray, min_count: int, iterative: bool = True) -> np.ndarray:
    """Rows kept by the k-core filter (k = ``min_count``): items with >= k rows, then users with
    >= k rows on kept items.

    Repeated (user, item) rows count, as in the reference preprocessing. ``iterative=False`` is
    the single pass of docs/remi.md B.7 (items may end below k); the default repeats until stable.
    """
    keep = np.ones(len(user_codes), dtype=bool)
    if min_count <= 1:
        return keep
    while True:
        # Per-code verdicts gathered as bools (1 byte per row, not an int64 count per row: 100M rows).
        item_ok = np.bincount(item_codes[keep], minlength=item_codes.max() + 1) >= min_count
        keep_items = keep & item_ok[item_codes]
        user_ok = np.bincount(user_codes[keep_items], minlength=user_codes.max() + 1) >= min_count
        new_keep: np.ndarray = keep_items & user_ok[user_codes]
        if not iterative or new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


@dataclass(frozen=True)
class EncodedCodes:
    """What :func:`build_interactions` derives from dense codes: the CSR and which raw codes survived.

    Attributes:
        offsets: (U + 1,) int64 CSR offsets.
        items: (N,) int32 item indices, user-major, time order.
        user_codes: (U,) raw user codes of the surviving users, ascending (= first-appearance order).
        item_codes: (I,) raw item codes of the surviving items in item-index order (by popularity).
    """

    offsets: np.ndarray
    items: np.ndarray
    user_codes: np.ndarray
    item_codes: np.ndarray


def build_interactions(
    user_codes: np.ndarray,
    item_codes: np.ndarray,
    n_users: int,
    n_items: int,
    min_count: int,
    iterative: bool = True,
    timestamps: np.ndarray | None = None,
    sorted_: bool = False,
) -> EncodedCodes:
    """k-core filter, stable time sort per user, and contiguous ids (items by descending popularity).

    Codes are dense and numbered by first appearance in the file (``pd.factorize`` order, or the
    DuckDB engine's). Rows must be in file order with their ``timestamps`` (they are sorted here,
    stably: rows of one user with equal timestamps keep their file order), or already in that
    order with ``sorted_=True`` (the engine sorts out of core). Shared by both paths so they
    cannot drift apart; only int32/int64 arrays, 8-16 bytes per interaction.
    """
    keep = kcore_mask(user_codes, item_codes, min_count, iterative)
    if not keep.any():
        raise RemiError(
            f"no interactions left after the {min_count}-core filter "
            f"({n_users} users, {n_items} items before); lower --min-count"
        )
    u, it = user_codes[keep], item_codes[keep]
    if not sorted_:
        if timestamps is None:
            raise ValueError("timestamps are needed to sort rows in file order")
        order = np.lexsort((timestamps[keep], u))  # stable: ties keep file order
        u, it = u[order], it[order]
        del order
    del keep

    # Items: contiguous indices by descending popularity (ties by first appearance): rank r is row r.
    counts = np.bincount(it, minlength=n_items)
    present = np.flatnonzero(counts)
    by_pop = present[np.argsort(-counts[present], kind="stable")]
    remap = np.zeros(n_items, dtype=np.int32)
    remap[by_pop] = ItemVocabulary.rows_to_indices(np.arange(len(by_pop)))
    items = remap[it]
    del it, remap

    # Users: u is sorted, so each run of equal codes is one user, in first-appearance order.
    starts = np.flatnonzero(np.concatenate(([True], u[1:] != u[:-1])))
    offsets = np.append(starts, len(u)).astype(np.int64)
    return EncodedCodes(offsets=offsets, items=items, user_codes=u[starts].astype(np.int64), item_codes=by_pop)


def encode(df: pd.DataFrame, min_count: int = 5, iterative: bool = True) -> Interactions:
    """The in-memory path (pandas): factorize the raw ids, then :func:`build_interactions`.

    Kept for small frames and as the oracle the DuckDB engine (:mod:`training.prep_engine`) is
    tested against; it holds a Python object per row, so it does not scale past ~10M rows.
    """
    user_codes, user_uniques = pd.factorize(df["user_id"], sort=False)
    item_codes, item_uniques = pd.factorize(df["item_id"], sort=False)
    built = build_interactions(
        user_codes,
        item_codes,
        len(user_uniques),
        len(item_uniques),
        min_count,
        iterative,
        timestamps=df["timestamp"].to_numpy(),
    )
    return Interactions(
        user_ids=np.asarray(user_uniques, dtype=object)[built.user_codes],
        item_ids=np.asarray(item_uniques, dtype=object)[built.item_codes],
        offsets=built.offsets,
        items=built.items,
    )


def load_interactions(path: str | Path, min_count: int = 5, iterative: bool = True) -> Interactions:
    """Read and encode a normalized interactions file."""
    return encode(read_interactions(path), min_count=min_count, iterative=iterative)


MIN_USERS_TO_SPLIT = 10


def split_users(data: Interactions, seed: int = 1230, fractions: tuple[float, float] = (0.8, 0.1)) -> UserSplit:
    """Seeded 80/10/10 shuffle split of users (inductive: valid/test users never train)."""
    if data.n_users < MIN_USERS_TO_SPLIT:
        raise RemiError(
            f"dataset too small to split: {data.n_users} users after filtering, need at least {MIN_USERS_TO_SPLIT}"
        )
    perm = np.random.default_rng(seed).permutation(data.n_users)
    n_train = int(round(fractions[0] * data.n_users))
    n_valid = max(1, int(round(fractions[1] * data.n_users)))
    n_train = min(n_train, data.n_users - n_valid - 1)
    return UserSplit(
        train=np.sort(perm[:n_train]),
        valid=np.sort(perm[n_train : n_train + n_valid]),
        test=np.sort(perm[n_train + n_valid :]),
    )


def read_split_table(path: str | Path) -> pd.DataFrame:
    """The ``user_id,part`` rows of a split file, checked (columns, part names, no user twice)."""
    path = Path(path)
    if not path.is_file():
        raise RemiError(f"split file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise RemiError(f"{path}: cannot parse split file ({str(exc).splitlines()[0]})") from exc
    if "user_id" not in df.columns or "part" not in df.columns:
        raise RemiError(f"{path}: split file needs columns user_id,part")
    bad_parts = sorted(set(df["part"]) - set(SPLIT_PARTS))
    if bad_parts:
        raise RemiError(f"{path}: unknown part(s) {bad_parts[:5]}; use train, valid or test")
    dup = df["user_id"].duplicated()
    if dup.any():
        raise RemiError(f"{path}: user {df['user_id'][dup].iloc[0]!r} appears more than once")
    return df


def assign_split_parts(path: str | Path, df: pd.DataFrame, known: np.ndarray, user_index: np.ndarray) -> UserSplit:
    """The split of a checked table, given per row whether the raw data has the user (``known``) and
    its user index after filtering (``user_index``, -1 when the k-core filter removed it)."""
    if not known.all():
        unknown = df["user_id"].to_numpy()[~known]
        raise RemiError(f"{path}: {len(unknown)} user(s) not in the data, e.g. {unknown[0]!r}")
    parts = {}
    part_of = df["part"].to_numpy()
    for part in SPLIT_PARTS:
        users = user_index[(part_of == part) & (user_index >= 0)].astype(np.int64)
        if len(users) == 0:
            raise RemiError(f"{path}: no {part} users left after filtering")
        parts[part] = np.sort(users)
    return UserSplit(**parts)


def read_split_file(path: str | Path, data: Interactions, raw_users: set[str] | None = None) -> UserSplit:
    """A predefined user split from a CSV ``user_id,part`` (part in train/valid/test).

    Users named in the file but absent from the raw data are an error; users the k-core filter
    removed are skipped; users of the data that the file does not name are left out of all parts.
    (The DuckDB path does the same lookups in the database: PrepEngine.read_split_file.)
    """
    df = read_split_table(path)
    names = df["user_id"].to_numpy(dtype=object)
    known_set = raw_users if raw_users is not None else set(data.user_ids)
    known = np.fromiter((n in known_set for n in names), dtype=bool, count=len(names))
    index = pd.Series(np.arange(data.n_users), index=pd.Index(np.asarray(data.user_ids, dtype=object)))
    user_index = index.reindex(names).fillna(-1).to_numpy().astype(np.int64)
    return assign_split_parts(path, df, known, user_index)


def eval_set(data: Interactions, users: np.ndarray, seq_len: int, history_fraction: float = 0.8) -> EvalSet:
    """Cut each user at c = floor(0.8 n): history = the L items before c, truth = items[c:].

    Users whose cut leaves no history or no truth are skipped.
    """
    n = data.lengths[users]
    cut = np.floor(history_fraction * n).astype(np.int64)
    ok = (cut >= 1) & (cut < n)
    users, n, cut = users[ok], n[ok], cut[ok]
    starts = data.offsets[users]
    h_start = np.maximum(0, cut - seq_len)
    history, mask = _window(data.items, starts + h_start, cut - h_start, seq_len)
    truth = np.split(data.items[_ranges(starts + cut, starts + n)].astype(np.int64), np.cumsum(n - cut)[:-1])
    return EvalSet(users=users, history=history, mask=mask, truth=truth)


def _window(items: np.ndarray, first: np.ndarray, length: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, L) left-aligned windows ``items[first : first + length]`` padded with 0, and their mask."""
    pos = np.arange(seq_len)
    mask = pos[None, :] < length[:, None]
    idx = np.where(mask, first[:, None] + pos[None, :], 0)
    return np.where(mask, items[idx], 0).astype(np.int64, copy=False), mask


class TrainSampler:
    """Draws training examples as in docs/remi.md B.5, vectorised.

    Each example: a uniformly random training user, a cut point c uniform in
    {min_history, ..., n - 1} (clipped for short users), target = item c, history = the L items
    before c. No epochs: long and short users are equally likely.

    ``target_window`` W > 1 draws the target uniformly from items c .. c + W - 1 (clipped at the
    end of the sequence) instead of item c: evaluation asks for every item after the cut, not only
    the next one (docs/remi.md A.3).
    """

    def __init__(
        self,
        data: Interactions,
        users: np.ndarray,
        seq_len: int,
        min_history: int = 4,
        seed: int = 0,
        target_window: int = 1,
    ):
        n = data.lengths[users]
        users = users[n >= 2]
        if len(users) == 0:
            raise RemiError("no training user has 2 or more interactions")
        self.items = data.items
        self.starts = data.offsets[users]
        self.n = data.lengths[users]
        self.low = np.minimum(min_history, self.n - 1)
        self.seq_len = seq_len
        self.target_window = target_window
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns history (B, L) int64, mask (B, L) bool, target (B,) int64."""
        u = self.rng.integers(0, len(self.n), batch_size)
        low, n, start = self.low[u], self.n[u], self.starts[u]
        cut = low + (self.rng.random(batch_size) * (n - low)).astype(np.int64)
        h_start = np.maximum(0, cut - self.seq_len)
        history, mask = _window(self.items, start + h_start, cut - h_start, self.seq_len)
        target = cut
        if self.target_window > 1:  # a second draw only when asked, so W = 1 keeps the reference stream
            reach = np.minimum(self.target_window, n - cut)
            target = cut + (self.rng.random(batch_size) * reach).astype(np.int64)
        return history, mask, self.items[start + target].astype(np.int64)
