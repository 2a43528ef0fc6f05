"""Item attributes: read from a CSV/Parquet table at export, stored columnar beside the item table,
loaded memory-mapped by the service, evaluated into allowed-item masks for request filters.

Why columnar: a request filter is evaluated over every item of the catalogue, one attribute at a
time, so each attribute is one contiguous array by FAISS row. Categorical values are stored as
int32 codes (one row per attribute, -1 = no value) with their value strings in a small JSON
schema; numeric values as float64 (one row per attribute, NaN = no value). The two arrays are
plain ``.npy`` files, so a served version maps them read-only and every worker shares one copy
in the page cache, as it does the item vectors (remi/artifacts.py).

Type inference (documented in docs/operations.md, "Item attributes"): a column whose values all
parse as numbers (int or float, not bool) is numeric; anything else (text, booleans, mixed) is
categorical, its values compared as text. ``categorical`` names columns to keep categorical even
when they look numeric (category ids, zip codes).

An item with no value for an attribute (absent from the table, or an empty cell) never matches a
condition on that attribute, ``not_in`` included: a filter only ever lets through items it can
vouch for.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from remi.contract import (
    ITEM_ATTR_CATEGORICAL,
    ITEM_ATTR_NUMERIC,
    ITEM_ATTRIBUTE_FILES,
    ITEM_ATTRIBUTES,
    ArtifactError,
    ArtifactManifest,
    file_entries,
    write_manifest,
)
from remi.errors import RemiError

log = logging.getLogger("remi.attributes")

ID_COLUMN = "item_id"
ATTRIBUTE_FORMAT = 1
NAME_MAX = 64  # characters of an attribute name (it is a JSON key of every filter)
AttributeKind = Literal["categorical", "numeric"]


class AttributeFileError(RemiError):
    """An item attribute table cannot be used (one line naming the file and the problem)."""


@dataclass(frozen=True)
class Attribute:
    """One attribute's schema: its kind, its row in its kind's array, and a categorical one's values."""

    name: str
    kind: AttributeKind
    row: int
    values: tuple[str, ...] = ()


class ItemAttributes:
    """Every item's attributes, columnar by FAISS row; immutable, shared by all requests of a version."""

    def __init__(
        self,
        attributes: Sequence[Attribute],
        codes: np.ndarray,
        numbers: np.ndarray,
        n_items: int,
        summary: dict[str, Any] | None = None,
    ) -> None:
        self.attributes = {a.name: a for a in attributes}
        self.codes = codes  # (C, I) int32, -1 = no value
        self.numbers = numbers  # (N, I) float64, NaN = no value
        self.n_items = n_items
        self.summary = summary or {}
        # value -> code per categorical attribute, built once (requests look values up)
        self._code_of = {a.name: {v: c for c, v in enumerate(a.values)} for a in attributes if a.kind == "categorical"}

    def __contains__(self, name: object) -> bool:
        return name in self.attributes

    def kind(self, name: str) -> AttributeKind:
        return self.attributes[name].kind

    def codes_of(self, name: str, values: Collection[str]) -> np.ndarray:
        """The codes of those values of a categorical attribute that occur in the catalogue."""
        table = self._code_of[name]
        return np.asarray(sorted({table[v] for v in values if v in table}), dtype=np.int64)

    def column(self, name: str) -> np.ndarray:
        """A categorical attribute's codes or a numeric one's values, by FAISS row."""
        attribute = self.attributes[name]
        table: np.ndarray = self.codes if attribute.kind == "categorical" else self.numbers
        column: np.ndarray = table[attribute.row]
        return column

    def schema(self) -> dict[str, Any]:
        """What the JSON file holds (without the arrays)."""
        return {
            "format": ATTRIBUTE_FORMAT,
            "n_items": self.n_items,
            "attributes": [
                {"name": a.name, "kind": a.kind, **({"values": list(a.values)} if a.kind == "categorical" else {})}
                for a in self.attributes.values()
            ],
            **self.summary,
        }


# ---------------------------------------------------------------- reading a table (export side)


def _read_table(path: Path, categorical: Collection[str]) -> Any:
    """The table as a pandas DataFrame: ids and forced-categorical columns as text, others inferred."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            text_columns = {ID_COLUMN, *categorical}
            return pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False, na_values=[""])
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise AttributeFileError(f"{path}: cannot read the attribute table ({str(exc).splitlines()[0][:200]})") from exc
    raise AttributeFileError(f"{path}: unknown table format {suffix!r} (expected .csv or .parquet)")


def _check_name(path: Path, name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > NAME_MAX or name != name.strip():
        raise AttributeFileError(
            f"{path}: column name {name!r} cannot be an attribute (text of 1..{NAME_MAX} characters, "
            "no surrounding whitespace)"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise AttributeFileError(f"{path}: column name {name!r} contains a control character")
    return name


def _is_numeric(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype))


def _as_text(value: object) -> str:
    """A categorical cell as the text requests compare with (booleans as true/false, like JSON)."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_attribute_table(
    path: str | Path, item_ids: Sequence[str], categorical: Collection[str] = ()
) -> ItemAttributes:
    """Reads and validates ``path`` against the model's item ids (row r = FAISS row r).

    Refused (AttributeFileError, one line naming the file): no ``item_id`` column, no attribute
    column, a duplicate item id (named), a bad column name, an infinite number, a forced
    categorical column that does not exist. Counted and reported, not refused: rows whose id the
    model does not know (``unknown_ids``), and model items without a row (no value for anything).
    """
    import pandas as pd

    path = Path(path)
    table = _read_table(path, categorical)
    columns = [str(c) for c in table.columns]
    if ID_COLUMN not in columns:
        raise AttributeFileError(f"{path}: no {ID_COLUMN!r} column (columns: {', '.join(columns[:10])})")
    names = [_check_name(path, c) for c in columns if c != ID_COLUMN]
    if not names:
        raise AttributeFileError(f"{path}: no attribute column besides {ID_COLUMN!r}")
    missing = sorted(set(categorical) - set(names))
    if missing:
        raise AttributeFileError(f"{path}: --categorical names {', '.join(missing)}, which is not a column")
    ids = table[ID_COLUMN]
    if ids.isna().any():
        raise AttributeFileError(f"{path}: row {int(np.argmax(ids.isna().to_numpy())) + 1}: empty {ID_COLUMN}")
    raw = [_as_text(v) for v in ids.tolist()]
    duplicated = pd.Series(raw).duplicated()
    if duplicated.any():
        second = int(np.argmax(duplicated.to_numpy()))
        first = raw.index(raw[second])
        raise AttributeFileError(
            f"{path}: duplicate item id {raw[second]!r} (data rows {first + 1} and {second + 1}); "
            "an item must have one row"
        )
    position = {raw_id: row for row, raw_id in enumerate(item_ids)}
    rows = np.asarray([position.get(r, -1) for r in raw], dtype=np.int64)
    known = rows >= 0
    n_items = len(item_ids)
    attributes: list[Attribute] = []
    codes: list[np.ndarray] = []
    numbers: list[np.ndarray] = []
    for name in names:
        series = table[name]
        if name not in categorical and _is_numeric(series):
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            if np.isinf(values).any():
                bad = int(np.argmax(np.isinf(values)))
                raise AttributeFileError(f"{path}: data row {bad + 1}: {name} is infinite (numbers must be finite)")
            column = np.full(n_items, np.nan)
            column[rows[known]] = values[known]
            attributes.append(Attribute(name, "numeric", len(numbers)))
            numbers.append(column)
        else:
            present = series.notna().to_numpy()
            text = [_as_text(v) if p else "" for v, p in zip(series.tolist(), present, strict=True)]
            vocabulary = sorted({t for t, p in zip(text, present, strict=True) if p})
            code_of = {v: c for c, v in enumerate(vocabulary)}
            cell = np.asarray([code_of[t] if p else -1 for t, p in zip(text, present, strict=True)], dtype=np.int32)
            column32 = np.full(n_items, -1, dtype=np.int32)
            column32[rows[known]] = cell[known]
            attributes.append(Attribute(name, "categorical", len(codes), tuple(vocabulary)))
            codes.append(column32)
    summary = {
        "source": path.name,
        "rows": len(raw),
        "unknown_ids": int((~known).sum()),
        "items_without_row": int(n_items - known.sum()),
    }
    if summary["unknown_ids"]:
        log.warning(
            "attribute rows for items the model does not know were skipped",
            extra={"file": str(path), "unknown_ids": summary["unknown_ids"]},
        )
    return ItemAttributes(
        attributes,
        np.stack(codes) if codes else np.zeros((0, n_items), dtype=np.int32),
        np.stack(numbers) if numbers else np.zeros((0, n_items), dtype=np.float64),
        n_items,
        summary,
    )


def write_attributes(folder: Path, attributes: ItemAttributes) -> None:
    """The three attribute files in ``folder`` (the manifest is the caller's)."""
    np.save(folder / ITEM_ATTR_CATEGORICAL, np.ascontiguousarray(attributes.codes, dtype=np.int32))
    np.save(folder / ITEM_ATTR_NUMERIC, np.ascontiguousarray(attributes.numbers, dtype=np.float64))
    (folder / ITEM_ATTRIBUTES).write_text(json.dumps(attributes.schema(), indent=1))


def attach_attributes(folder: str | Path, manifest: ArtifactManifest, attributes: ItemAttributes) -> ArtifactManifest:
    """Adds the attributes to an exported artifact folder: its files, then the manifest listing them.

    The manifest is rewritten last and atomically (contract.write_manifest), so a reader sees the
    folder with or without attributes, never a half; the model version is unchanged (attributes
    are not the model: an index built from the folder still pairs with it).
    """
    folder = Path(folder)
    if attributes.n_items != manifest.n_items:
        raise ArtifactError(f"{folder}: attributes for {attributes.n_items} items, the model has {manifest.n_items}")
    write_attributes(folder, attributes)
    files = {**manifest.files, **file_entries(folder, list(ITEM_ATTRIBUTE_FILES))}
    updated = manifest.model_copy(
        update={"files": files, "item_attributes": {a.name: a.kind for a in attributes.attributes.values()}}
    )
    write_manifest(folder, updated)
    return updated


# ---------------------------------------------------------------- loading (service side)


def load_attributes(folder: Path, manifest: ArtifactManifest, mmap: bool) -> ItemAttributes | None:
    """The folder's attributes (files already size- and hash-checked by the manifest), or None.

    Checked on load: the schema parses, the arrays have one column per item and one row per
    attribute, codes are within their value lists and numbers are finite or NaN.
    """
    if ITEM_ATTRIBUTES not in manifest.files:
        return None
    for name in ITEM_ATTRIBUTE_FILES:
        if name not in manifest.files:
            raise ArtifactError(f"{folder / ITEM_ATTRIBUTES}: listed without {name}")
    where = folder / ITEM_ATTRIBUTES
    try:
        schema = json.loads(where.read_text())
        entries = schema["attributes"]
        attributes = [
            Attribute(str(e["name"]), e["kind"], 0, tuple(str(v) for v in e.get("values", []))) for e in entries
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{where}: unreadable attribute schema ({str(exc).splitlines()[0][:200]})") from exc
    if any(a.kind not in ("categorical", "numeric") for a in attributes) or len({a.name for a in attributes}) != len(
        attributes
    ):
        raise ArtifactError(f"{where}: attribute kinds must be categorical or numeric, names unique")
    rows = {"categorical": 0, "numeric": 0}
    placed = []
    for a in attributes:
        placed.append(Attribute(a.name, a.kind, rows[a.kind], a.values))
        rows[a.kind] += 1
    mode: Literal["r"] | None = "r" if mmap else None
    try:
        codes = np.load(folder / ITEM_ATTR_CATEGORICAL, allow_pickle=False, mmap_mode=mode)
        numbers = np.load(folder / ITEM_ATTR_NUMERIC, allow_pickle=False, mmap_mode=mode)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{folder}: cannot read an attribute array ({str(exc).splitlines()[0]})") from exc
    n = manifest.n_items
    if codes.dtype != np.int32 or codes.shape != (rows["categorical"], n):
        raise ArtifactError(
            f"{folder / ITEM_ATTR_CATEGORICAL}: {codes.shape} {codes.dtype}, "
            f"expected ({rows['categorical']}, {n}) int32"
        )
    if numbers.dtype != np.float64 or numbers.shape != (rows["numeric"], n):
        raise ArtifactError(
            f"{folder / ITEM_ATTR_NUMERIC}: {numbers.shape} {numbers.dtype}, expected ({rows['numeric']}, {n}) float64"
        )
    for a in placed:
        if a.kind == "categorical" and n:
            column = codes[a.row]
            if column.min() < -1 or column.max() >= len(a.values):
                raise ArtifactError(f"{folder / ITEM_ATTR_CATEGORICAL}: {a.name}: a code outside its value list")
        elif a.kind == "numeric" and np.isinf(numbers[a.row]).any():
            raise ArtifactError(f"{folder / ITEM_ATTR_NUMERIC}: {a.name}: an infinite value")
    summary = {k: v for k, v in schema.items() if k in ("source", "rows", "unknown_ids", "items_without_row")}
    return ItemAttributes(placed, codes, numbers, n, summary)


# ---------------------------------------------------------------- evaluating conditions


@dataclass(frozen=True)
class Condition:
    """One checked condition on one attribute: ``op`` is eq/in/not_in (values) or gte/lte/gt/lt (bound).

    Categorical values are text; numeric ones floats. Built by the service from a request's
    ``filter`` after checking it against the schema (service/filters.py).
    """

    attribute: str
    op: Literal["in", "not_in", "gte", "lte", "gt", "lt"]
    values: tuple[str | float, ...] = ()
    bound: float = math.nan


def allowed_mask(attributes: ItemAttributes, conditions: Sequence[Condition]) -> np.ndarray:
    """(I,) bool by FAISS row: the items that satisfy every condition (an AND), vectorised per condition."""
    mask = np.ones(attributes.n_items, dtype=bool)
    for c in conditions:
        column = attributes.column(c.attribute)
        if attributes.kind(c.attribute) == "categorical":
            n_values = len(attributes.attributes[c.attribute].values)
            lut = np.zeros(n_values + 1, dtype=bool)  # the last slot is code -1 (no value): never matches
            picked = attributes.codes_of(c.attribute, [str(v) for v in c.values])
            if c.op == "in":
                lut[picked] = True
            else:  # not_in
                lut[:n_values] = True
                lut[picked] = False
            mask &= lut[column]
        elif c.op in ("in", "not_in"):
            hit = np.isin(column, np.asarray(c.values, dtype=np.float64))
            mask &= hit if c.op == "in" else (~hit & ~np.isnan(column))
        else:
            with np.errstate(invalid="ignore"):  # NaN compares False: no value never matches
                if c.op == "gte":
                    mask &= column >= c.bound
                elif c.op == "lte":
                    mask &= column <= c.bound
                elif c.op == "gt":
                    mask &= column > c.bound
                else:
                    mask &= column < c.bound
    return mask
