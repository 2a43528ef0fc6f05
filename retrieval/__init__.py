"""The query path: from a user's interest vectors to one answer, for one loaded version.

Depends on ``remi/`` only (and numpy, faiss, onnxruntime, orjson), never on ``service/``,
``index/``, ``training/`` or torch: serving and offline evaluation use the same search and merge,
and ``index/`` (which builds and publishes versions) gates them on it. ``store`` (resolve
``current``/``previous``, load a version as a checked model + index pair), ``engine`` (one model +
index pair: tower, search, merge, JSON), ``planner`` (how a batch's queries are grouped into
searches and merges), ``search`` (K interests per user, exact exclusion), ``filtered`` (filtered
search and its planner), ``dedup`` (near-copy interests), ``merge`` (per-interest lists -> one
list), ``filter_cache`` (repeated filters' masks and rows), ``retriever`` (the seam between a plan
and an index: the FAISS backend), ``milvus`` (the Milvus backend; pymilvus is the ``milvus`` extra,
imported only when chosen).
"""
