"""FAISS item index: build, search and merge per-interest results."""
