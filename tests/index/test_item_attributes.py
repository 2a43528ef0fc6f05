"""Item attributes under the artifact contract: read and validated from a table, attached to an
artifact folder, hashed, copied into published versions, refused when tampered with, and
evaluated into exact masks (remi/attributes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from index.publish import reindex
from remi.artifacts import load_artifacts
from remi.attributes import AttributeFileError, Condition, allowed_mask, read_attribute_table
from remi.contract import (
    ITEM_ATTR_CATEGORICAL,
    ITEM_ATTR_NUMERIC,
    ITEM_ATTRIBUTES,
    MANIFEST,
    VERSION_ARTIFACTS,
    ArtifactError,
    read_artifact_manifest,
    read_current,
    version_dir,
)
from retrieval.store import load_current
from tests.service.attr_model import AttrModel, write_attr_artifacts

IDS = ["a", "b", "c", "d"]


@pytest.fixture
def attr_model(tmp_path: Path) -> AttrModel:
    return write_attr_artifacts(tmp_path / "arts", n_items=300)


def table(tmp_path: Path, text: str, name: str = "items.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_types_are_inferred_numbers_numeric_everything_else_categorical(tmp_path: Path) -> None:
    path = table(tmp_path, "item_id,price,color,in_stock,code\na,1.5,red,true,7\nb,2,blue,false,8\nc,,red,true,9\n")
    attributes = read_attribute_table(path, IDS)
    kinds = {name: attributes.kind(name) for name in attributes.attributes}
    assert kinds == {"price": "numeric", "color": "categorical", "in_stock": "categorical", "code": "numeric"}
    assert attributes.attributes["color"].values == ("blue", "red")
    assert attributes.attributes["in_stock"].values == ("false", "true")  # booleans as JSON text
    price = attributes.column("price")
    assert price[:2].tolist() == [1.5, 2.0] and np.isnan(price[2:]).all()  # c's empty cell, d absent
    assert attributes.column("color").tolist() == [1, 0, 1, -1]  # d has no row: no value


def test_forced_categorical_columns_keep_numbers_as_text(tmp_path: Path) -> None:
    path = table(tmp_path, "item_id,code\na,007\nb,8\n")
    attributes = read_attribute_table(path, IDS, categorical=["code"])
    assert attributes.kind("code") == "categorical" and attributes.attributes["code"].values == ("007", "8")


def test_parquet_tables_read_like_csv(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": ["a", "c"], "price": [1.0, 3.0], "color": ["red", None]}).to_parquet(path)
    attributes = read_attribute_table(path, IDS)
    assert attributes.kind("price") == "numeric" and attributes.column("color").tolist() == [0, -1, -1, -1]


def test_unknown_ids_are_counted_and_skipped(tmp_path: Path) -> None:
    path = table(tmp_path, "item_id,color\na,red\nzz,blue\nyy,red\n")
    attributes = read_attribute_table(path, IDS)
    assert attributes.summary["unknown_ids"] == 2 and attributes.summary["items_without_row"] == 3
    assert attributes.column("color").tolist() == [1, -1, -1, -1]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("item_id,color\na,red\nb,blue\na,green\n", "duplicate item id 'a' (data rows 1 and 3)"),
        ("sku,color\na,red\n", "no 'item_id' column"),
        ("item_id\na\n", "no attribute column"),
        ("item_id,price\na,inf\n", "price is infinite"),
    ],
)
def test_bad_tables_are_refused_with_one_line_naming_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = table(tmp_path, text)
    with pytest.raises(AttributeFileError) as caught:
        read_attribute_table(path, IDS)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and needle in message


def test_attributes_are_hashed_in_the_manifest_and_load_memory_mapped(attr_model: AttrModel) -> None:
    manifest = read_artifact_manifest(attr_model.artifacts)
    assert {ITEM_ATTRIBUTES, ITEM_ATTR_CATEGORICAL, ITEM_ATTR_NUMERIC} <= set(manifest.files)
    assert manifest.item_attributes == {"category": "categorical", "market": "categorical", "price": "numeric"}
    loaded = load_artifacts(attr_model.artifacts, mmap=True).attributes
    assert loaded is not None and isinstance(loaded.codes, np.memmap) and isinstance(loaded.numbers, np.memmap)
    assert (np.asarray(loaded.codes) == attr_model.attributes.codes).all()


@pytest.mark.parametrize("name", [ITEM_ATTRIBUTES, ITEM_ATTR_CATEGORICAL, ITEM_ATTR_NUMERIC])
def test_a_tampered_attribute_file_is_refused_at_load(attr_model: AttrModel, name: str) -> None:
    path = attr_model.artifacts / name
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # same size, other content
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifacts(attr_model.artifacts)


def test_a_manifest_listing_only_part_of_the_attributes_is_refused(attr_model: AttrModel) -> None:
    manifest = json.loads((attr_model.artifacts / MANIFEST).read_text())
    del manifest["files"][ITEM_ATTR_NUMERIC]
    (attr_model.artifacts / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"does not list {ITEM_ATTR_NUMERIC}"):
        read_artifact_manifest(attr_model.artifacts)


def test_published_versions_carry_the_attributes_and_refuse_tampering(attr_model: AttrModel, tmp_path: Path) -> None:
    root = tmp_path / "root"
    reindex(attr_model.artifacts, root, kind="flat")
    loaded = load_current(root).artifacts.attributes
    assert loaded is not None and set(loaded.attributes) == {"category", "market", "price"}
    published = version_dir(root, str(read_current(root))) / VERSION_ARTIFACTS / ITEM_ATTR_CATEGORICAL
    published.chmod(0o644)
    data = bytearray(published.read_bytes())
    data[-1] ^= 0x01
    published.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_current(root)


def test_masks_are_exactly_the_rows_that_satisfy_every_condition(attr_model: AttrModel) -> None:
    attributes = attr_model.attributes
    frame = attr_model.table.set_index("item_id").reindex(attr_model.item_ids)
    conditions = (
        Condition("category", "in", ("shoes", "bags", "no-such-value")),
        Condition("market", "not_in", ("fr",)),
        Condition("price", "gte", bound=20.0),
        Condition("price", "lt", bound=150.0),
    )
    expected = (
        frame["category"].isin(["shoes", "bags"])
        & frame["market"].notna()
        & (frame["market"] != "fr")
        & (frame["price"] >= 20)
        & (frame["price"] < 150)
    ).to_numpy()
    assert (allowed_mask(attributes, conditions) == expected).all()
    numeric_in = allowed_mask(attributes, (Condition("price", "in", (float(frame["price"].iloc[0]),)),))
    assert numeric_in[0] and numeric_in.sum() >= 1
