"""Transparent huge pages for a large item table (docs/results.md#large-catalogues---optimizer-rowwise-adagrad), best
effort, Linux only.

With sparse updates a step reads and writes a few thousand random rows of the item table; at 4M x
64 floats (1 GB) in 4 KiB pages nearly every row is a TLB miss and a page walk. Backed by 2 MiB
pages the same rows cost about half (select + add of 3,968 random rows: 2.0 -> 1.2 ms on this
machine, 1 thread). The kernel here gives huge pages only to memory that asks for them
(``transparent_hugepage=madvise``), so the table is copied into a fresh allocation advised with
MADV_HUGEPAGE before its pages are first touched. Anywhere this does not apply (another OS, THP
off, madvise refused) the table stays as it was: the numbers are identical either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

MADV_HUGEPAGE = 14  # linux/mman.h
HUGE_PAGE = 2 << 20
MIN_BYTES = 64 << 20  # below this the table fits the TLB's reach well enough


def huge_page_copy(table: torch.Tensor) -> torch.Tensor:
    """A copy of ``table`` in memory advised for huge pages, or ``table`` itself when not applicable."""
    size = table.numel() * table.element_size()
    if not sys.platform.startswith("linux") or table.device.type != "cpu" or size < MIN_BYTES:
        return table
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return table
    fresh = torch.empty_like(table, memory_format=torch.contiguous_format)  # not touched yet
    start = (fresh.data_ptr() + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
    end = fresh.data_ptr() + size
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if end <= start or libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_HUGEPAGE) != 0:
        return table
    return fresh.copy_(table)
