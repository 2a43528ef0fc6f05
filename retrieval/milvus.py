"""Milvus behind the retriever contract (retrieval/retriever.py): one collection per published version.

For catalogues or traffic beyond what one replica holds: the item vectors live in a Milvus
collection (a cluster, or Milvus Lite, the embedded engine with the same client API, in tests and
demos), and the serving workers keep only the model (the ONNX tower, the item table for the
score merge and the attributes for the filter counts). The layout, written by
``index/milvus_publish.py`` and read here:

* a collection per version, named ``<prefix><version>`` (:func:`collection_name`): the item's
  FAISS row as the int64 primary key ``row``, its vector (inner product), and one nullable scalar
  field per item attribute, ``attr_<i>`` in the schema's order (categorical ones hold the
  attribute's codes, numeric ones the number; no value is null), so a request's values never
  need quoting in an expression; the collection's properties name its version and model;
* the version's folder under the index root, as for FAISS, with the model artifacts and
  ``milvus.json`` (:class:`MilvusManifest`) instead of a FAISS index;
* an alias (``REMI_MILVUS_ALIAS``) naming the serving collection: the reindex job flips it
  atomically, the service follows it (:class:`MilvusServing`, polled as ``current`` is).

How the contract is met (:class:`MilvusRetriever`): the plain rows of a batch (every searched
interest of every user with the same k and blocklist version) go in one search call, the
blocklist as its filter expression (``row not in [...]``) and the limit deep enough to drop each
user's seen items from its own rows (k + the largest seen set); a row that still comes back
short while more items exist is searched again for its user alone, with its seen items in the
expression. A filtered user is one call with its filter's conditions, its exclude_items, its
seen items and the blocklist in the expression. FLAT (exact) collections answer exactly; an HNSW
answer shorter than the items its filter allows is redone exactly over the allowed rows of the
worker's item table (path ``graph+exact``, as the FAISS filter planner does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from pymilvus import MilvusClient, MilvusException

from remi.artifacts import Artifacts, load_artifacts
from remi.attributes import Condition, ItemAttributes
from remi.contract import (
    VERSION_ARTIFACTS,
    VERSIONS,
    ArtifactError,
    ItemVocabulary,
    check_real_folder,
    read_small_file,
    version_dir,
)
from retrieval.filtered import search_exact
from retrieval.retriever import Found, RetrieverUnavailable, Where, searchable_rows
from retrieval.search import SharedExclusion, ties_by_item

MILVUS_FORMAT = 1
MANIFEST_FILE = "milvus.json"  # in a version folder, beside artifacts/
PK, VECTOR = "row", "vector"  # the collection's primary key (the FAISS row) and vector field
PROP_VERSION, PROP_MODEL = "remi.version", "remi.model_version"  # collection properties
INDEX_TYPES: dict[str, str] = {"flat": "FLAT", "hnsw": "HNSW"}  # the kinds a Milvus version may be
TOPK_MAX = 16_384  # Milvus's largest limit of one search
SEARCH_CHUNK = 1_024  # query rows per search call when measuring (the gate)
KEEPALIVE_MS = 300_000  # gRPC keepalive of the client (see connect)
NOT_LOADED = 101  # Milvus's error code for a search on a released collection
RANGE_OPS = {"gte": ">=", "lte": "<=", "gt": ">", "lt": "<"}
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_]")


class MilvusManifest(BaseModel):
    """One Milvus collection built from one model's item embeddings (``milvus.json``)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    format_version: int
    backend: Literal["milvus"] = "milvus"
    kind: Literal["flat", "hnsw"]  # what /version shows as the index kind
    index_type: str  # the Milvus index: FLAT, HNSW
    params: dict[str, Any]  # build and search parameters (hnsw: m, ef_construction, ef_search)
    collection: str
    fields: dict[str, str]  # item attribute -> its field in the collection
    n_items: int
    dim: int
    model_version: str
    build_seconds: float
    recall_at_50: float | None  # measured through Milvus against exact search, as for FAISS
    recall_queries: int
    recall_source: str
    calibration: dict[str, Any] | None = None
    pymilvus_version: str
    created_at: str


@dataclass
class MilvusVersion:
    """A Milvus version ready to serve: its folder's artifacts and manifest, checked against its collection."""

    name: str
    folder: Path
    artifacts: Artifacts
    manifest: MilvusManifest


def collection_name(prefix: str, version: str) -> str:
    """``<prefix><version>`` with every character Milvus refuses in a name made ``_``."""
    name = _NOT_A_NAME.sub("_", prefix + version)
    return name if name[:1].isalpha() or name[:1] == "_" else "_" + name


def attribute_fields(attributes: ItemAttributes | None) -> dict[str, str]:
    """Attribute name -> its field (``attr_<i>``): positional, so any attribute name fits."""
    return {name: f"attr_{i}" for i, name in enumerate(attributes.attributes)} if attributes else {}


def connect(uri: str, token: str | None = None, timeout: float | None = None) -> MilvusClient:
    """A client of ``uri`` (``http://host:19530``, or a Milvus Lite ``.db`` file, one process at a time).

    Keepalive pings every KEEPALIVE_MS instead of pymilvus's 10 s: a gRPC server with the default
    ping policy (``milvus-lite server``'s) answers idle pings more frequent than every 5 minutes with
    GOAWAY "too_many_pings", which dropped the shared connection of an idle replica (and pymilvus
    could not recover it). Every call carries its own deadline, so a dead peer is still found by the
    next call."""
    options = {"grpc.keepalive_time_ms": KEEPALIVE_MS, "grpc.keepalive_permit_without_calls": False}
    return MilvusClient(uri=uri, token=token or "", timeout=timeout, grpc_options=options)


def read_manifest(folder: Path) -> MilvusManifest:
    """A version folder's ``milvus.json``; ArtifactError when missing or unreadable."""
    data = read_small_file(folder / MANIFEST_FILE, 4 * 2**20)
    if data is None:
        raise ArtifactError(f"{folder / MANIFEST_FILE}: missing (not a Milvus version)")
    try:
        return MilvusManifest.model_validate(json.loads(data))
    except ValueError as exc:
        raise ArtifactError(f"{folder / MANIFEST_FILE}: unreadable ({str(exc).splitlines()[0][:200]})") from exc


def list_milvus_versions(root: str | Path) -> list[str]:
    """The Milvus versions of an index root (folders with ``milvus.json``), oldest first."""
    folder = Path(root) / VERSIONS
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if not p.name.startswith(".") and not p.is_symlink() and (p / MANIFEST_FILE).is_file()
    )


def alias_target(client: MilvusClient, alias: str) -> str | None:
    """The collection ``alias`` names, None before the first flip."""
    if alias not in client.list_aliases().get("aliases", []):
        return None
    return str(client.describe_alias(alias)["collection_name"])


def collection_properties(client: MilvusClient, collection: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in (client.describe_collection(collection).get("properties") or {}).items()}


def load_milvus_version(
    root: str | Path, name: str, client: MilvusClient, threads: int = 1, mmap: bool = False
) -> MilvusVersion:
    """Loads a Milvus version (its artifacts, its manifest) and checks its collection pairs with them:
    same version and model in the collection's properties, one entity per item; then loads the
    collection for search."""
    folder = check_real_folder(version_dir(root, name), "version")
    manifest = read_manifest(folder)
    arts = load_artifacts(
        check_real_folder(folder / VERSION_ARTIFACTS, "version artifacts"), threads=threads, mmap=mmap, pack_ids=True
    )
    where = f"collection {manifest.collection}"
    if manifest.model_version != arts.model_version or (manifest.n_items, manifest.dim) != (
        arts.manifest.n_items,
        arts.manifest.dim,
    ):
        raise ArtifactError(f"{folder / MANIFEST_FILE}: not built from the model in {VERSION_ARTIFACTS}/")
    if not client.has_collection(manifest.collection):
        raise ArtifactError(f"{where}: missing in Milvus")
    properties = collection_properties(client, manifest.collection)
    if properties.get(PROP_VERSION) != name or properties.get(PROP_MODEL) != arts.model_version:
        raise ArtifactError(f"{where}: belongs to version {properties.get(PROP_VERSION)!r}, not {name}")
    client.load_collection(manifest.collection)
    rows = int(client.get_collection_stats(manifest.collection).get("row_count", -1))
    if rows != manifest.n_items:
        raise ArtifactError(f"{where}: holds {rows} items, the model has {manifest.n_items}")
    return MilvusVersion(name, folder, arts, manifest)


def rows_expression(rows: np.ndarray) -> str:
    """``row not in [...]`` for sorted FAISS rows ('' when there are none)."""
    return f"{PK} not in [{','.join(map(str, rows.tolist()))}]" if len(rows) else ""


def condition_expression(condition: Condition, field: str, attributes: ItemAttributes) -> str:
    """One request condition as a Milvus boolean expression over ``field``, with remi's semantics:
    an item without a value never matches, ``not_in`` included; categorical values as their codes
    (values the catalogue does not hold match nothing)."""
    if attributes.kind(condition.attribute) == "categorical":
        codes = attributes.codes_of(condition.attribute, [str(v) for v in condition.values]).tolist()
        listed = "[" + ", ".join(str(c) for c in codes) + "]"
    elif condition.op in ("in", "not_in"):
        listed = "[" + ", ".join(repr(float(v)) for v in condition.values) + "]"
    else:
        return f"{field} {RANGE_OPS[condition.op]} {float(condition.bound)!r}"
    if condition.op == "in":
        return f"{field} in {listed}"
    return f"({field} is not null and {field} not in {listed})"


def _all_of(parts: Sequence[str]) -> str:
    return " and ".join(f"({p})" for p in parts if p)


class MilvusRetriever:
    """One version's collection behind the retriever contract (the module docstring says how)."""

    backend = "milvus"

    def __init__(
        self,
        client: MilvusClient,
        manifest: MilvusManifest,
        item_vectors: np.ndarray,
        attributes: ItemAttributes | None,
        timeout: float | None = None,
    ) -> None:
        self.client, self.manifest, self.timeout = client, manifest, timeout
        self.collection = manifest.collection
        self.item_vectors = item_vectors  # float32 by FAISS row: exact redo of a short HNSW answer
        self.attributes = attributes
        self.n_items = manifest.n_items
        self.exact = manifest.kind == "flat"
        self.calls = 0  # search calls made (the contract tests count them)
        self._blocked: tuple[SharedExclusion, str] | None = None  # the blocklist's expression, per list version

    def search(
        self,
        queries: np.ndarray,
        owner: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray],
        blocked: SharedExclusion | None,
        where: Where | None = None,
    ) -> Found:
        if where is not None:
            return self.search_user(queries, k, exclude[0], blocked, where)
        if not len(queries):
            return _empty(0, k) + (None,)
        sets = [_rows_of(e) for e in exclude]
        limit = min(k + max(len(s) for s in sets), self.n_items)
        if limit > TOPK_MAX:  # seen sets too long to drop after the search: each user alone
            return self._per_user(queries, owner, k, sets, blocked)
        found, scores = self.call(queries, limit, self.blocked_expression(blocked))
        ids, out_scores, kept = _drop_owned(found, scores, owner, sets, k)
        # Short rows whose call stopped at the limit (more items may exist), and every short row of
        # an approximate index (its walk may have missed some): their users alone, seen items in the expression.
        full = ((found >= 0).sum(axis=1) >= limit) & (limit < self.n_items)
        for user in np.unique(owner[(kept < k) & (full | (not self.exact))]):
            rows = np.flatnonzero(owner == user)
            ids[rows], out_scores[rows], _ = self._user_call(queries[rows], k, sets[int(user)], blocked)
        return ids, out_scores, None

    def search_user(
        self, queries: np.ndarray, k: int, seen: np.ndarray, blocked: SharedExclusion | None, where: Where | None = None
    ) -> Found:
        if where is None:
            return self._user_call(queries, k, _rows_of(seen), blocked)
        if where.conditions is None:  # only a mask is known (the explain route): exactly over it
            ids, scores = search_exact(self.item_vectors, queries, k, searchable_rows(where.allowed, seen, blocked))
            return ids, scores, "exact"
        banned = np.union1d(_rows_of(seen), _rows_of(where.exclude_items))
        return self._user_call(queries, k, banned, blocked, where)

    def _per_user(
        self, queries: np.ndarray, owner: np.ndarray, k: int, sets: list[np.ndarray], blocked: SharedExclusion | None
    ) -> Found:
        ids, scores = _empty(len(queries), k)
        for user in np.unique(owner):
            rows = np.flatnonzero(owner == user)
            ids[rows], scores[rows], _ = self._user_call(queries[rows], k, sets[int(user)], blocked)
        return ids, scores, None

    def _user_call(
        self,
        queries: np.ndarray,
        k: int,
        banned: np.ndarray,
        blocked: SharedExclusion | None,
        where: Where | None = None,
    ) -> Found:
        """One user's rows in one call, every exclusion (and its filter) in the expression; an
        approximate answer shorter than the allowed items is redone exactly (``graph+exact``)."""
        parts = [self.filter_expression(where.conditions or ())] if where is not None else []
        parts += [self.blocked_expression(blocked), rows_expression(banned)]
        ids, scores = self.call(queries, min(k, self.n_items), _all_of(parts))
        ids, scores = _widen(ids, scores, k)
        path = "exact" if self.exact else "graph"
        if self.exact:
            return ids, scores, path
        allowed = where.allowed if where is not None else np.ones(self.n_items, dtype=bool)
        searchable = searchable_rows(allowed, ItemVocabulary.rows_to_indices(banned), blocked)
        want = min(k, int(np.count_nonzero(searchable)))
        if ((ids >= 0).sum(axis=1) < want).any():
            ids, scores = search_exact(self.item_vectors, queries, k, searchable)
            path = "graph+exact"
        return ids, scores, path

    def blocked_expression(self, blocked: SharedExclusion | None) -> str:
        """The blocklist as an expression, built once per list version."""
        if blocked is None or not len(blocked):
            return ""
        cached = self._blocked
        if cached is None or cached[0] is not blocked:
            cached = (blocked, rows_expression(np.flatnonzero(blocked.mask)))
            self._blocked = cached
        return cached[1]

    def filter_expression(self, conditions: Sequence[Condition]) -> str:
        """A request filter's conditions as one expression (an AND)."""
        if not conditions:
            return ""
        if self.attributes is None:  # checked before (service/filters.py)
            raise ValueError("a filter on a model without item attributes")
        fields, attributes = self.manifest.fields, self.attributes
        return _all_of([condition_expression(c, fields[c.attribute], attributes) for c in conditions])

    def _search(self, search: dict[str, Any]) -> Any:
        try:
            return self.client.search(self.collection, **search)
        except MilvusException as exc:
            if exc.code != NOT_LOADED:
                raise
            # Milvus (Lite, after a restart) released the collection: load it again, once.
            self.client.load_collection(self.collection, timeout=self.timeout)
            return self.client.search(self.collection, **search)

    def call(self, queries: np.ndarray, limit: int, expression: str) -> tuple[np.ndarray, np.ndarray]:
        """One search call: (Q, d) queries -> item indices (Q, limit), -1 padded, and their inner products."""
        self.calls += 1
        data = np.ascontiguousarray(queries, dtype=np.float32)
        params: dict[str, Any] = {"metric_type": "IP"}
        if not self.exact:  # Milvus wants a beam at least as wide as the limit
            params["params"] = {"ef": max(int(self.manifest.params.get("ef_search", 64)), limit)}
        search = {"data": list(data), "limit": max(1, limit), "filter": expression, "output_fields": [PK]}
        search |= {"search_params": params, "anns_field": VECTOR, "timeout": self.timeout}
        try:
            result = self._search(search)
        except Exception as exc:  # pymilvus and grpc raise their own exceptions for every failure
            raise RetrieverUnavailable(f"milvus search failed ({str(exc).splitlines()[0][:200]})") from exc
        ids, scores = _empty(len(data), limit)
        for q, hits in enumerate(result):
            n = len(hits.ids)
            ids[q, :n] = ItemVocabulary.rows_to_indices(np.asarray(hits.ids, dtype=np.int64))
            scores[q, :n] = hits.distances
        return ties_by_item(ids, scores)


def _empty(q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((q, k), -1, dtype=np.int64), np.full((q, k), -np.inf, dtype=np.float32)


def _rows_of(indices: np.ndarray) -> np.ndarray:
    """Item indices -> their sorted unique FAISS rows (unknown ones dropped)."""
    rows = ItemVocabulary.indices_to_rows(np.unique(np.asarray(indices, dtype=np.int64)))
    return rows[rows >= 0]


def _widen(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, m) lists padded to (Q, k) with -1 / -inf (m <= k)."""
    if ids.shape[1] >= k:
        return ids[:, :k], scores[:, :k]
    wide_ids, wide_scores = _empty(len(ids), k)
    wide_ids[:, : ids.shape[1]], wide_scores[:, : ids.shape[1]] = ids, scores
    return wide_ids, wide_scores


def _drop_owned(
    found: np.ndarray, scores: np.ndarray, owner: np.ndarray, sets: list[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's first k results that are not its owner's (``sets``: FAISS rows), and how many it kept."""
    drop = found < 0
    rows_found = ItemVocabulary.results_to_rows(found)
    for user in np.unique(owner):
        mine = np.flatnonzero(owner == user)
        if len(sets[int(user)]):
            drop[mine] |= np.isin(rows_found[mine], sets[int(user)])
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept results first, in their order
    kept = np.minimum((~drop).sum(axis=1), k)
    ids = np.take_along_axis(found, order, 1)
    out = np.take_along_axis(scores, order, 1)
    empty = np.arange(order.shape[1])[None, :] >= kept[:, None]
    ids[empty], out[empty] = -1, -np.inf
    return _widen(ids, out, k) + (kept,)


class MilvusServing:
    """The service's side of Milvus versions: which version the alias names, and loading one.

    Connects on first use, so a worker starts (and says why it is not ready in /readyz) while
    Milvus is unreachable; every Milvus failure comes out as an :class:`ArtifactError` naming the
    URI, which the version poller records as it records a broken version folder.
    """

    def __init__(
        self, root: str | Path, uri: str, alias: str, token: str | None = None, timeout: float | None = None
    ) -> None:
        self.root, self.uri, self.alias, self.token, self.timeout = Path(root), uri, alias, token, timeout
        self._client: MilvusClient | None = None
        self._version_of: dict[str, str] = {}  # collection -> version (a collection's properties never change)

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            self._client = self._milvus("connect", lambda: connect(self.uri, self.token, self.timeout))
        return self._client

    def _milvus(self, what: str, call: Any) -> Any:
        try:
            return call()
        except (ArtifactError, OSError):
            raise
        except Exception as exc:  # pymilvus raises its own exceptions (and grpc's) for every failure
            raise ArtifactError(f"milvus {self.uri}: {what} failed ({str(exc).splitlines()[0][:300]})") from exc

    def current(self) -> str | None:
        """The version the alias names (None before the first ``remi reindex --backend milvus``)."""
        collection = self._milvus("describe alias", lambda: alias_target(self.client, self.alias))
        if collection is None:
            return None
        if collection not in self._version_of:
            properties = self._milvus("describe collection", lambda: collection_properties(self.client, collection))
            version = properties.get(PROP_VERSION)
            if version is None:
                raise ArtifactError(f"alias {self.alias} names collection {collection}, which no reindex job made")
            self._version_of[collection] = version
        return self._version_of[collection]

    def versions(self) -> list[str]:
        """The Milvus versions of the index root, oldest first (the fallbacks of a worker with none)."""
        return list_milvus_versions(self.root)

    def load(self, name: str, threads: int = 1, mmap: bool = False) -> tuple[MilvusVersion, MilvusRetriever]:
        """A version and the retriever over its collection."""
        version = self._milvus("load", lambda: load_milvus_version(self.root, name, self.client, threads, mmap))
        arts = version.artifacts
        item_vectors = np.ascontiguousarray(arts.item_vectors, dtype=np.float32)
        return version, MilvusRetriever(self.client, version.manifest, item_vectors, arts.attributes, self.timeout)
