"""The item table's huge-page copy changes where the numbers live, never the numbers."""

from __future__ import annotations

import sys

import pytest
import torch

from training.hugepages import MIN_BYTES, huge_page_copy
from training.models import build_model


def test_small_tables_are_left_as_they_are() -> None:
    table = torch.randn(100, 8)
    assert huge_page_copy(table) is table


def test_a_large_sparse_table_is_the_same_values_as_the_dense_model_s() -> None:
    n_items = MIN_BYTES // (64 * 4) + 1
    torch.manual_seed(0)
    sparse = build_model("dnn", n_items, 64, 1, 4, sparse_items=True).item_emb.weight
    torch.manual_seed(0)
    dense = build_model("dnn", n_items, 64, 1, 4).item_emb.weight
    assert torch.equal(sparse, dense) and sparse.is_contiguous()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise is Linux's")
def test_a_large_table_is_copied_into_fresh_memory() -> None:
    table = torch.randn(MIN_BYTES // 4 + 1024)
    copy = huge_page_copy(table)
    assert copy.data_ptr() != table.data_ptr() and torch.equal(copy, table)
