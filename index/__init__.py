"""FAISS item index: the write side.

Building and publishing versions (batch jobs and the CLI): ``params`` (IndexSettings), ``build``
(kinds, recall gate, calibration), ``probe`` (real interest queries, smoke test), ``compat`` (may a
model replace the serving one), ``publish`` (lock, build, validate, flip ``current``, prune,
rollback). Reading versions and searching them is :mod:`retrieval`, which this package imports
(the gate measures the served search) and which never imports it.
"""
