"""A tiny artifact folder and index version built without torch, for the in-process API tests.

The user tower is a hand-written ONNX graph with the contract's inputs and outputs (see
remi/contract.py): a self-attentive multi-interest read-out over a fixed item embedding table,

    emb      = table[item_ids]                              (B, L, d)
    routing  = masked softmax over L of (emb @ R)^T         (B, K, L)
    interest_vectors = routing @ emb                        (B, K, d)

so the answers are deterministic, depend on the history and sum routing weights to 1 per
interest, as a trained tower's do. Everything else (ids, popularity, held-out histories,
manifest, index version) goes through the same contract helpers and reindex job as the real
export, so the service cannot tell the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from remi.contract import (
    ARTIFACT_FILES,
    FORMAT_VERSION,
    INPUT_ITEMS,
    INPUT_MASK,
    ITEM_EMBEDDINGS,
    ITEM_IDS,
    ITEM_POPULARITY,
    MODEL_FILE,
    NPZ_HISTORY,
    NPZ_MASK,
    OUTPUT_INTERESTS,
    OUTPUT_ROUTING,
    SAMPLE_HISTORIES,
    ArtifactManifest,
    ItemVocabulary,
    file_entries,
    model_version,
    utc_now,
    write_manifest,
)

N_ITEMS, DIM, N_INTERESTS, SEQ_LEN, OPSET = 40, 8, 3, 12, 18


@dataclass(frozen=True)
class TinyModel:
    """Where the tiny model lives and what a test needs to know about it."""

    artifacts: Path
    item_ids: list[str]  # raw id of FAISS row r (item index r + 1)
    popularity: np.ndarray  # (N_ITEMS,) int64, by FAISS row

    def most_popular(self, n: int) -> list[str]:
        """The cold-start order: most interactions first, ties by item index."""
        return [self.item_ids[row] for row in np.argsort(-self.popularity, kind="stable")[:n]]


def tower_graph(table: np.ndarray, routing_weights: np.ndarray) -> onnx.ModelProto:
    """The ONNX user tower over ``table`` (I + 1, d) (row 0 = padding) and ``routing_weights`` (d, K)."""
    batch, length = "B", SEQ_LEN
    nodes = [
        helper.make_node("Gather", ["table", INPUT_ITEMS], ["emb"], axis=0),  # (B, L, d)
        helper.make_node("MatMul", ["emb", "routing_weights"], ["logits_lk"]),  # (B, L, K)
        helper.make_node("Transpose", ["logits_lk"], ["logits"], perm=[0, 2, 1]),  # (B, K, L)
        helper.make_node("Not", [INPUT_MASK], ["padding"]),  # (B, L)
        helper.make_node("Unsqueeze", ["padding", "axis1"], ["padding_k"]),  # (B, 1, L)
        helper.make_node("Where", ["padding_k", "minus_inf", "logits"], ["masked"]),  # (B, K, L)
        helper.make_node("Softmax", ["masked"], [OUTPUT_ROUTING], axis=-1),  # (B, K, L)
        helper.make_node("MatMul", [OUTPUT_ROUTING, "emb"], [OUTPUT_INTERESTS]),  # (B, K, d)
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_user_tower",
        inputs=[
            helper.make_tensor_value_info(INPUT_ITEMS, TensorProto.INT64, [batch, length]),
            helper.make_tensor_value_info(INPUT_MASK, TensorProto.BOOL, [batch, length]),
        ],
        outputs=[
            helper.make_tensor_value_info(OUTPUT_INTERESTS, TensorProto.FLOAT, [batch, N_INTERESTS, DIM]),
            helper.make_tensor_value_info(OUTPUT_ROUTING, TensorProto.FLOAT, [batch, N_INTERESTS, length]),
        ],
        initializer=[
            numpy_helper.from_array(table.astype(np.float32), "table"),
            numpy_helper.from_array(routing_weights.astype(np.float32), "routing_weights"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(-1e9, dtype=np.float32), "minus_inf"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    return model


def write_model_folder(
    out: Path, item_ids: list[str], rng: np.random.Generator, popularity_step: int = 1
) -> tuple[ArtifactManifest, np.ndarray]:
    """Write a complete artifact folder at ``out`` (created) for ``item_ids``, as ``remi export``
    would: the tiny tower, random item vectors, popularity counts ``permutation * step + 1``
    (distinct: one cold-start order), sample histories and the manifest. Returns the manifest
    and the popularity counts."""
    n_items = len(item_ids)
    out.mkdir(parents=True)
    vectors = rng.normal(size=(n_items, DIM)).astype(np.float32)  # by FAISS row
    table = ItemVocabulary.add_padding(vectors)  # by item index, row 0 = padding
    onnx.save(tower_graph(table, rng.normal(size=(DIM, N_INTERESTS))), out / MODEL_FILE)
    np.save(out / ITEM_EMBEDDINGS, vectors)
    (out / ITEM_IDS).write_text("\n".join(item_ids) + "\n")
    popularity = rng.permutation(n_items).astype(np.int64) * popularity_step + 1
    np.save(out / ITEM_POPULARITY, popularity)
    history = rng.integers(1, n_items + 1, size=(16, SEQ_LEN), dtype=np.int64)
    mask = np.arange(SEQ_LEN)[None, :] < rng.integers(2, SEQ_LEN + 1, size=(16, 1))
    arrays: dict[str, Any] = {NPZ_HISTORY: np.where(mask, history, 0), NPZ_MASK: mask}  # numpy's stub: **kwds
    np.savez(out / SAMPLE_HISTORIES, **arrays)
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
    return manifest, popularity


def write_tiny_artifacts(out: Path, seed: int = 0) -> TinyModel:
    """A complete artifact folder at ``out`` (created), as ``remi export`` would write it."""
    item_ids = [f"item-{i:03d}" for i in range(N_ITEMS)]
    _, popularity = write_model_folder(out, item_ids, np.random.default_rng(seed), popularity_step=3)
    return TinyModel(out, item_ids, popularity)


def publish_tiny_version(artifacts: Path, root: Path) -> str:
    """Publishes an exact (flat) index version of ``artifacts`` under ``root``; returns its name."""
    from index.publish import reindex

    return reindex(artifacts, root, kind="flat").index_version
