"""The write side of Milvus versions: a collection per version, gated, then the alias flipped (the batch job).

``remi reindex --backend milvus`` mirrors the FAISS job (index/publish.py) step by step, under
the same root lock: the artifacts are copied into a new version folder (the service loads the
model from there), a collection named after the version is created and filled (the item's FAISS
row as primary key, its vector, one scalar field per item attribute; retrieval/milvus.py), the
collection is measured with the same recall gate as a FAISS index (recall@50 of the served
answers against exact search, through Milvus itself; an HNSW beam calibrated up the same ladder)
and smoke-queried with exclusions, and only then does the alias move to it, in one
``alter_alias`` call, which Milvus applies atomically. A failure anywhere drops the new
collection and leaves the alias where it was; a killed job's collection (no version folder) is
dropped by the next job. Rollback moves the alias back to an older version's collection; pruning
drops the collections (and folders) of the versions beyond ``keep``, never the aliased one.

A collection prefix belongs to one index root: the job drops collections under its prefix that
no version folder of the root names.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pymilvus
from pymilvus import DataType, MilvusClient

from index.build import EF_LADDER, FLAT_MAX_ITEMS, exact_top, resolve_params
from index.params import KEEP, MIN_CATALOGUE_OVERLAP, MIN_HISTORY_COVERAGE, MIN_RECALL, RECALL_OF
from index.probe import interest_queries
from index.publish import (
    answers_of,
    check_serving_replacement,
    clean_partial,
    copy_artifacts,
    new_version_name,
    rollback_target,
    root_lock,
    seal_version,
)
from remi.artifacts import Artifacts
from remi.contract import (
    VERSIONS,
    ArtifactError,
    ItemVocabulary,
    atomic_folder,
    read_artifact_manifest,
    utc_now,
    version_dir,
)
from remi.errors import RemiError
from retrieval.merge import merge_by_score
from retrieval.milvus import (
    INDEX_TYPES,
    MANIFEST_FILE,
    MILVUS_FORMAT,
    PK,
    PROP_MODEL,
    PROP_VERSION,
    SEARCH_CHUNK,
    VECTOR,
    MilvusManifest,
    MilvusRetriever,
    alias_target,
    attribute_fields,
    collection_name,
    collection_properties,
    list_milvus_versions,
    load_milvus_version,
    read_manifest,
)

log = logging.getLogger("remi.reindex")

INSERT_BATCH = 10_000  # entities per insert call
INDEX_WAIT_S = 3600.0  # longest wait for Milvus to build a collection's index


@dataclass(frozen=True)
class MilvusTarget:
    """Where Milvus versions go: a client, the alias the service follows, the collections' prefix."""

    client: MilvusClient
    alias: str
    prefix: str


@dataclass(frozen=True)
class MilvusReindexResult:
    index_version: str
    previous: str | None
    built: bool  # False when the alias already names a collection of these artifacts and settings
    manifest: MilvusManifest
    pruned: list[str]
    seconds: float


def serving_version(target: MilvusTarget) -> str | None:
    """The version the alias names (None before the first flip, or for a collection not ours)."""
    collection = alias_target(target.client, target.alias)
    if collection is None:
        return None
    return collection_properties(target.client, collection).get(PROP_VERSION)


def milvus_params(kind: str, n_items: int, dim: int, params: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The kind a Milvus version is built as (``auto``: flat up to FLAT_MAX_ITEMS items, else HNSW)
    and its parameters; IVF-PQ and compressed HNSW storage are FAISS-only here."""
    chosen = ("flat" if n_items <= FLAT_MAX_ITEMS else "hnsw") if kind == "auto" else kind
    if chosen not in INDEX_TYPES:
        raise RemiError(f"--kind {chosen} has no Milvus backend here; choose flat, hnsw or auto")
    resolved = resolve_params(chosen, n_items, dim, params)
    if resolved.pop("storage", "flat") != "flat":
        raise RemiError("--hnsw-storage fp16 / sq8 is FAISS-only; Milvus versions store float vectors")
    return chosen, resolved


def create_collection(
    client: MilvusClient, name: str, version: str, arts: Artifacts, kind: str, params: dict[str, Any]
) -> None:
    """The version's collection (replacing a leftover of that name), in Milvus's bulk-load order:
    created without an index, filled, flushed, then indexed, the build waited for, and loaded, so
    that what the gate measures is the indexed collection the service will search (a collection
    created with its index is loaded at once, and rows flushed into it afterwards were searched
    exhaustively by Milvus Lite until a reload: a gate of 1.0 on an HNSW collection that served 0.80)."""
    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(PK, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=arts.manifest.dim)
    columns = _attribute_columns(schema, arts)
    client.create_collection(name, schema=schema, properties={PROP_VERSION: version, PROP_MODEL: arts.model_version})
    vectors = np.ascontiguousarray(arts.item_vectors, dtype=np.float32)
    for start in range(0, len(vectors), INSERT_BATCH):
        stop = min(len(vectors), start + INSERT_BATCH)
        client.insert(
            name,
            [
                {PK: row, VECTOR: vectors[row], **{field: column[row] for field, column in columns.items()}}
                for row in range(start, stop)
            ],
        )
    client.flush(name)
    index = client.prepare_index_params()
    build = {"M": params["m"], "efConstruction": params["ef_construction"]} if kind == "hnsw" else {}
    index.add_index(field_name=VECTOR, index_type=INDEX_TYPES[kind], metric_type="IP", params=build)
    client.create_index(name, index)
    wait_for_index(client, name, len(vectors))
    client.load_collection(name)


def _attribute_columns(schema: Any, arts: Artifacts) -> dict[str, list[Any]]:
    """One nullable field per item attribute added to ``schema``, and its values by row (None: no value)."""
    attributes = arts.attributes
    columns: dict[str, list[Any]] = {}
    for attribute, field in attribute_fields(attributes).items():
        assert attributes is not None
        values = np.asarray(attributes.column(attribute))
        if attributes.kind(attribute) == "categorical":
            schema.add_field(field, DataType.INT64, nullable=True)
            columns[field] = [None if v < 0 else int(v) for v in values.tolist()]
        else:
            schema.add_field(field, DataType.DOUBLE, nullable=True)
            columns[field] = [None if v != v else float(v) for v in values.tolist()]
    return columns


def wait_for_index(client: MilvusClient, name: str, rows: int, timeout: float = INDEX_WAIT_S) -> None:
    """Until Milvus reports the vector index built over every row (a cluster builds it asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.describe_index(name, VECTOR)
        if int(state.get("indexed_rows", 0)) >= rows and not int(state.get("pending_index_rows", 0)):
            return
        if time.monotonic() > deadline:
            raise RemiError(f"collection {name}: index not built after {timeout:.0f} s ({state})")
        time.sleep(1.0)


def served_recall(retriever: MilvusRetriever, vectors: np.ndarray, queries: np.ndarray, group: int) -> float:
    """Recall@50 of the collection's answers (``group`` > 1: each user's merged top-50 over its
    ``group`` interests in a row, as the service merges them) against exact search."""
    k = min(50, len(vectors))
    truth = exact_top(vectors, queries, k, group)
    ids, scores = [], []
    for start in range(0, len(queries), SEARCH_CHUNK):
        found, found_scores = retriever.call(queries[start : start + SEARCH_CHUNK], k, "")
        ids.append(found)
        scores.append(found_scores)
    rows = ItemVocabulary.results_to_rows(np.concatenate(ids))
    merged = np.concatenate(scores)
    if group > 1:
        users = len(rows) // group
        shape = (users, group, k)
        rows, _, _ = merge_by_score(rows[: users * group].reshape(shape), merged[: users * group].reshape(shape), k)
    hits = [len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, rows, strict=True)]
    return float(np.mean(hits) / k) if hits else 1.0


def gate(
    manifest: MilvusManifest,
    retriever: MilvusRetriever,
    arts: Artifacts,
    queries: np.ndarray,
    group: int,
    min_recall: float,
    given: dict[str, Any] | None,
) -> MilvusManifest:
    """The recall gate of a FAISS build, through Milvus: measured as is (flat, or a given
    ``ef_search``), else the HNSW beam walked up EF_LADDER until recall@50 reaches ``min_recall``."""
    vectors = np.ascontiguousarray(arts.item_vectors, dtype=np.float32)
    if not len(queries):
        queries, group = vectors[np.random.default_rng(0).choice(len(vectors), min(len(vectors), 1000), False)], 1
    calibration = None
    if manifest.kind == "hnsw" and "ef_search" not in (given or {}):
        tried: dict[str, float] = {}
        for ef in EF_LADDER:
            retriever.manifest = manifest = manifest.model_copy(update={"params": {**manifest.params, "ef_search": ef}})
            recall = served_recall(retriever, vectors, queries, group)
            tried[str(ef)] = round(recall, 4)
            if recall >= min_recall:
                break
        calibration = {"param": "ef_search", "target": min_recall, "tried": tried}
    else:
        recall = served_recall(retriever, vectors, queries, group)
    log.info("milvus collection measured", extra={"collection": manifest.collection, "recall@50": recall})
    if recall < min_recall:
        raise RemiError(
            f"Milvus {manifest.kind} collection recall@50 is {recall:.4f} against exact search, below the threshold "
            f"{min_recall}; raise its parameters (--hnsw-m, --ef-search) or lower --min-recall"
        )
    source = "answers" if group > 1 else "interests"
    measured = {"recall_at_50": recall, "recall_queries": len(queries), "recall_source": source}
    return manifest.model_copy(update={**measured, "calibration": calibration})


def smoke(retriever: MilvusRetriever, arts: Artifacts, where: str) -> None:
    """Real queries with their seen items excluded, through the collection as the service searches it."""
    history, mask = arts.sample_history[:8], arts.sample_mask[:8]
    if len(history) == 0:
        history = np.full((1, arts.manifest.seq_len), ItemVocabulary.first_index(), dtype=np.int64)
        mask = np.zeros((1, arts.manifest.seq_len), bool)
        mask[0, 0] = True
    vectors, _ = arts.tower.run(history, mask)
    for user, seen in enumerate(h[m] for h, m in zip(history, mask, strict=True)):
        ids, scores, _ = retriever.search_user(vectors[user], 10, seen, None)
        found = ids >= 0
        if not found.any():
            raise ArtifactError(f"{where}: smoke query returned no results")
        if ids.max() > arts.manifest.n_items or not np.isfinite(scores[found]).all():
            raise ArtifactError(f"{where}: smoke query returned out-of-range ids or non-finite scores")
        if np.isin(ids, seen).any():
            raise ArtifactError(f"{where}: smoke query returned an excluded item")


def _up_to_date(
    root: Path,
    previous: str | None,
    model_version: str,
    kind: str,
    wanted: dict[str, Any],
    given: dict[str, Any] | None,
    source: str,
) -> MilvusManifest | None:
    """The serving version's manifest when it was built from these artifacts with these settings."""
    if previous is None:
        return None
    try:
        old = read_manifest(version_dir(root, previous))
    except (ArtifactError, RemiError):
        return None
    skip = {"ef_search"} - set(given or {})  # a beam calibration chose, unless given
    same = {k: v for k, v in old.params.items() if k not in skip} == {k: v for k, v in wanted.items() if k not in skip}
    fresh = old.model_version == model_version and old.kind == kind and same and old.recall_source == source
    return old if fresh else None


def sweep_orphans(root: Path, target: MilvusTarget) -> list[str]:
    """Drops collections under the prefix that no version folder of the root names (a killed job's)."""
    named = set()
    for version in list_milvus_versions(root):
        try:
            named.add(read_manifest(version_dir(root, version)).collection)
        except ArtifactError:
            pass
    aliased = alias_target(target.client, target.alias)
    doomed = [
        c
        for c in target.client.list_collections()
        if c.startswith(collection_name(target.prefix, "")) and c not in named and c != aliased
    ]
    for name in doomed:
        target.client.drop_collection(name)
    return doomed


def prune(root: Path, target: MilvusTarget, keep: int, current: str) -> list[str]:
    """Drops the collections and folders of the Milvus versions beyond the ``keep`` newest (never ``current``)."""
    versions = list_milvus_versions(root)
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
    aliased = alias_target(target.client, target.alias)
    for name in doomed:
        try:
            collection = read_manifest(version_dir(root, name)).collection
            if collection != aliased and target.client.has_collection(collection):
                target.client.drop_collection(collection)
        except ArtifactError:
            pass
        shutil.rmtree(version_dir(root, name), ignore_errors=True)
    return doomed


def flip_alias(target: MilvusTarget, collection: str) -> None:
    """Points the alias at ``collection`` in one call (created on the first flip)."""
    if alias_target(target.client, target.alias) is None:
        target.client.create_alias(collection, target.alias)
    else:
        target.client.alter_alias(collection, target.alias)


def _publish(
    tmp: Path,
    artifacts_dir: str | Path,
    target: MilvusTarget,
    version: str,
    kind: str,
    wanted: dict[str, Any],
    given: dict[str, Any] | None,
    min_recall: float,
    recall_of: str,
) -> MilvusManifest:
    """Fills the hidden version folder ``tmp`` and the version's collection, gated; the manifest last."""
    arts = copy_artifacts(artifacts_dir, tmp, read_artifact_manifest(artifacts_dir))
    name = collection_name(target.prefix, version)
    t0 = time.perf_counter()
    create_collection(target.client, name, version, arts, kind, wanted)
    manifest = MilvusManifest(
        format_version=MILVUS_FORMAT,
        kind=kind,  # checked by milvus_params
        index_type=INDEX_TYPES[kind],
        params=wanted,
        collection=name,
        fields=attribute_fields(arts.attributes),
        n_items=arts.manifest.n_items,
        dim=arts.manifest.dim,
        model_version=arts.model_version,
        build_seconds=round(time.perf_counter() - t0, 3),
        recall_at_50=None,
        recall_queries=0,
        recall_source="",
        pymilvus_version=pymilvus.__version__,
        created_at=utc_now(),
    )
    retriever = MilvusRetriever(target.client, manifest, arts.item_vectors, arts.attributes)
    queries = interest_queries(arts, active_only=recall_of == "interests")
    manifest = gate(manifest, retriever, arts, queries, answers_of(arts, recall_of), min_recall, given)
    retriever.manifest = manifest
    smoke(retriever, arts, f"collection {name}")
    (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=1))
    seal_version(tmp)
    return manifest


def reindex_milvus(
    artifacts_dir: str | Path,
    root: str | Path,
    target: MilvusTarget,
    kind: str = "auto",
    params: dict[str, Any] | None = None,
    min_recall: float = MIN_RECALL,
    keep: int = KEEP,
    force: bool = False,
    recall_of: str = RECALL_OF,
    min_catalogue_overlap: float = MIN_CATALOGUE_OVERLAP,
    min_history_coverage: float = MIN_HISTORY_COVERAGE,
) -> MilvusReindexResult:
    """Builds, validates and activates a new Milvus version (module docstring)."""
    if keep < 1:
        raise RemiError("--keep must be at least 1 (the version being activated)")
    t0 = time.perf_counter()
    root = Path(root)
    (root / VERSIONS).mkdir(parents=True, exist_ok=True)
    with root_lock(root):
        removed = clean_partial(root) + sweep_orphans(root, target)
        if removed:
            log.warning("removed what an interrupted job left", extra={"removed": removed})
        source = read_artifact_manifest(artifacts_dir)
        previous = serving_version(target)
        chosen, wanted = milvus_params(kind, source.n_items, source.dim, params)
        recall_source = "answers" if recall_of == "answers" and source.interests > 1 else "interests"
        old = _up_to_date(root, previous, source.model_version, chosen, wanted, params, recall_source)
        old = None if force else old
        if old is not None and previous is not None:
            log.info("milvus version up to date", extra={"version": previous})
            return MilvusReindexResult(previous, previous, False, old, [], time.perf_counter() - t0)
        if previous and not force:
            check_serving_replacement(root, previous, artifacts_dir, min_catalogue_overlap, min_history_coverage)
        version = new_version_name(source.model_version, f"milvus-{chosen}")
        collection = collection_name(target.prefix, version)
        try:
            with atomic_folder(version_dir(root, version)) as tmp:
                manifest = _publish(tmp, artifacts_dir, target, version, chosen, wanted, params, min_recall, recall_of)
            flip_alias(target, collection)
        except BaseException:
            # Never served: neither the collection nor the folder stays behind.
            if target.client.has_collection(collection) and alias_target(target.client, target.alias) != collection:
                target.client.drop_collection(collection)
            shutil.rmtree(version_dir(root, version), ignore_errors=True)
            raise
        pruned = prune(root, target, keep, version)
    seconds = time.perf_counter() - t0
    log.info("milvus reindex done", extra={"version": version, "previous": previous, "collection": collection})
    return MilvusReindexResult(version, previous, True, manifest, pruned, seconds)


def rollback_milvus(root: str | Path, target: MilvusTarget, to: str | None = None) -> str:
    """Points the alias at an older Milvus version's collection (default: the one before the serving one),
    checked first as the service will load it."""
    root = Path(root)
    with root_lock(root):
        to = rollback_target(root, list_milvus_versions(root), serving_version(target), to, "Milvus ")
        version = load_milvus_version(root, to, target.client)
        flip_alias(target, version.manifest.collection)
    return to


def status_milvus(root: str | Path, target: MilvusTarget) -> dict[str, Any]:
    """The serving version (the alias's), its collection, and the Milvus versions kept."""
    return {
        "current": serving_version(target),
        "alias": target.alias,
        "collection": alias_target(target.client, target.alias),
        "versions": list_milvus_versions(root),
    }
