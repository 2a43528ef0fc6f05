"""A tiny-tower model over a few thousand items that carries item attributes, for the filter tests.

The tower is tests/service/tiny_model.py's hand-written ONNX graph (no torch); the catalogue is
large enough for an HNSW index whose walk a selective filter can starve, and the attributes are
attached with the same code ``remi export --item-attributes`` runs (remi/attributes.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from remi.attributes import ItemAttributes, attach_attributes, read_attribute_table
from tests.service.tiny_model import write_model_folder

CATEGORIES = ("shoes", "bags", "hats", "socks", "rare")  # "rare" is on ~0.3% of the items
MARKETS = ("fr", "de", "us")


@dataclass(frozen=True)
class AttrModel:
    artifacts: Path
    item_ids: list[str]  # raw id of FAISS row r
    table: pd.DataFrame  # the attribute table as written (item_id, category, market, price), missing rows absent
    attributes: ItemAttributes


def attribute_table(item_ids: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """category (skewed, with a rare value), market, price (numeric, some empty); 5% of items absent."""
    n = len(item_ids)
    category = rng.choice(CATEGORIES, size=n, p=[0.5, 0.3, 0.15, 0.047, 0.003])
    price = np.round(rng.uniform(1, 200, size=n), 2)
    frame = pd.DataFrame(
        {
            "item_id": item_ids,
            "category": category,
            "market": rng.choice(MARKETS, size=n),
            "price": np.where(rng.random(n) < 0.02, np.nan, price),
        }
    )
    return frame[rng.random(n) >= 0.05].reset_index(drop=True)


ATTR_ITEMS = 3000  # the catalogue of the shared attr_model fixture (tests/service/conftest.py)


def write_attr_artifacts(out: Path, n_items: int = ATTR_ITEMS, seed: int = 0) -> AttrModel:
    """An artifact folder of ``n_items`` items with attributes, as export would write it."""
    rng = np.random.default_rng(seed)
    item_ids = [f"sku-{i:05d}" for i in range(n_items)]
    manifest, _ = write_model_folder(out, item_ids, rng)
    table = attribute_table(item_ids, rng)
    source = out.parent / f"{out.name}-items.csv"
    table.to_csv(source, index=False)
    attributes = read_attribute_table(source, item_ids)
    attach_attributes(out, manifest, attributes)
    return AttrModel(out, item_ids, table, attributes)
