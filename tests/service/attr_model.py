"""A tiny-tower model over a few thousand items that carries item attributes, for the filter tests.

The tower is tests/service/tiny_model.py's hand-written ONNX graph (no torch); the catalogue is
large enough for an HNSW index whose walk a selective filter can starve, and the attributes are
attached with the same code ``remi export --item-attributes`` runs (remi/attributes.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

from remi.attributes import ItemAttributes, attach_attributes, read_attribute_table
from remi.contract import (
    ARTIFACT_FILES,
    FORMAT_VERSION,
    ITEM_EMBEDDINGS,
    ITEM_IDS,
    ITEM_POPULARITY,
    MODEL_FILE,
    NPZ_HISTORY,
    NPZ_MASK,
    SAMPLE_HISTORIES,
    ArtifactManifest,
    ItemVocabulary,
    file_entries,
    model_version,
    utc_now,
    write_manifest,
)
from tests.service.tiny_model import DIM, N_INTERESTS, OPSET, SEQ_LEN, tower_graph

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


def write_attr_artifacts(out: Path, n_items: int = 3000, seed: int = 0) -> AttrModel:
    """An artifact folder of ``n_items`` items with attributes, as export would write it."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    item_ids = [f"sku-{i:05d}" for i in range(n_items)]
    vectors = rng.normal(size=(n_items, DIM)).astype(np.float32)
    onnx.save(tower_graph(ItemVocabulary.add_padding(vectors), rng.normal(size=(DIM, N_INTERESTS))), out / MODEL_FILE)
    np.save(out / ITEM_EMBEDDINGS, vectors)
    (out / ITEM_IDS).write_text("\n".join(item_ids) + "\n")
    np.save(out / ITEM_POPULARITY, rng.permutation(n_items).astype(np.int64) + 1)
    history = rng.integers(1, n_items + 1, size=(16, SEQ_LEN), dtype=np.int64)
    mask = np.arange(SEQ_LEN)[None, :] < rng.integers(2, SEQ_LEN + 1, size=(16, 1))
    np.savez(out / SAMPLE_HISTORIES, **{NPZ_HISTORY: np.where(mask, history, 0), NPZ_MASK: mask})
    files = file_entries(out, list(ARTIFACT_FILES))
    manifest = ArtifactManifest(
        format_version=FORMAT_VERSION,
        model_version=model_version(out, files),
        backbone="tiny",
        dim=DIM,
        interests=N_INTERESTS,
        seq_len=SEQ_LEN,
        n_items=n_items,
        opset=OPSET,
        created_at=utc_now(),
        data_fingerprint={},
        metrics={},
        train_config={},
        parity_max_abs=0.0,
        files=files,
    )
    write_manifest(out, manifest)
    table = attribute_table(item_ids, rng)
    source = out.parent / f"{out.name}-items.csv"
    table.to_csv(source, index=False)
    attributes = read_attribute_table(source, item_ids)
    attach_attributes(out, manifest, attributes)
    return AttrModel(out, item_ids, table, attributes)
