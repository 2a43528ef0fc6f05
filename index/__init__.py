"""FAISS item index.

Read side (what the service imports): ``store`` (resolve ``current``/``previous``, load a
version as a checked model + index pair), ``search`` (K interests per user, exact exclusion),
``merge`` (per-interest lists -> one list). Write side (batch jobs and the CLI): ``build``
(kinds, recall gate, calibration), ``probe`` (real interest queries, smoke test), ``publish``
(lock, build, validate, flip ``current``, prune, rollback).
"""
