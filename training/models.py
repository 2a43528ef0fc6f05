"""Multi-interest user towers: ComiRec-SA, ComiRec-DR, MIND, and the mean-pooling reference.

Every backbone maps a padded history to K interest vectors and a K x L routing matrix::

    interest_vectors, routing = model(item_ids, mask)   # (B, L), (B, L) -> (B, K, d), (B, K, L)

Routing rows are distributions over the valid history positions (zero on padding), so the
REMI routing regulariser and the collapse diagnostics apply to any backbone. Padding
never influences an output: its embedding row is zero and every path multiplies by the mask.

References: Cen et al., "Controllable Multi-Interest Framework for Recommendation" (KDD 2020,
ComiRec); Li et al., "Multi-Interest Network with Dynamic Routing" (CIKM 2019, MIND); Xie et al.,
"Rethinking Multi-Interest Learning for Candidate Matching" (RecSys 2023, REMI). Deviations from
the reference scripts are the ones docs/remi.md Part A takes (routing softmax over interests, zeroed
padding).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from remi.contract import ItemVocabulary
from training.hugepages import huge_page_copy

MODELS = ("comirec-sa", "comirec-dr", "mind", "dnn")
NEG_INF = -1e9  # finite: a fully padded row must not produce NaN


class MultiInterestModel(nn.Module):
    """Shared item table and the common interface; subclasses implement :meth:`from_embeddings`."""

    def __init__(self, n_items: int, dim: int, n_interests: int, seq_len: int, sparse_items: bool = False):
        super().__init__()
        self.n_items, self.dim, self.n_interests, self.seq_len = n_items, dim, n_interests, seq_len
        padding = ItemVocabulary.PADDING
        # rows: the padding row(s), then one per item index (ItemVocabulary.table_size rows).
        # sparse_items: lookups give sparse gradients (only the rows used), for SparseAdam; the
        # weights, their initialisation and the state_dict are the same either way.
        self.item_emb = nn.Embedding(
            ItemVocabulary.table_size_for(n_items), dim, padding_idx=padding, sparse=sparse_items
        )
        nn.init.kaiming_normal_(self.item_emb.weight)  # std sqrt(2/d), as the reference scripts
        with torch.no_grad():
            self.item_emb.weight[padding].zero_()
        if sparse_items:  # random-row updates: huge pages halve their TLB misses on a large table
            self.item_emb.weight.data = huge_page_copy(self.item_emb.weight.data)

    def embed(self, item_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, d), zero on padded slots whatever id they hold."""
        emb: torch.Tensor = self.item_emb(item_ids)
        return emb * mask.unsqueeze(-1).to(self.item_emb.weight.dtype)

    def item_vectors(self) -> torch.Tensor:
        """(I, d) item embeddings without the padding row, indexed by FAISS row (ItemVocabulary)."""
        return self.item_emb.weight[ItemVocabulary.first_index() :]

    def forward(self, item_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns interest_vectors (B, K, d) and routing (B, K, L)."""
        return self.from_embeddings(self.embed(item_ids, mask), mask)

    def from_embeddings(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as forward, from the embedded history h (B, L, d), already zero on padding.

        The trainer looks up history, targets and negatives in one embedding call (one dense
        gradient buffer for the item table instead of three) and enters here.
        """
        raise NotImplementedError


class ComiRecSA(MultiInterestModel):
    """Self-attentive extractor: A = softmax_L(W2 tanh(W1 (H + P))), V = A H (no position in V)."""

    def __init__(
        self,
        n_items: int,
        dim: int,
        n_interests: int,
        seq_len: int,
        sparse_items: bool = False,
        shared_interest: bool = False,
    ):
        super().__init__(n_items, dim, n_interests, seq_len, sparse_items)
        # shared_interest: row 0 of the routing is uniform over the valid positions, so interest 0
        # is the history mean and the other rows are free (docs/remi.md A.11).
        self.shared_interest = shared_interest
        self.pos = nn.Parameter(torch.empty(1, seq_len, dim))
        self.w1 = nn.Linear(dim, 4 * dim, bias=False)
        self.w2 = nn.Linear(4 * dim, n_interests, bias=False)
        nn.init.kaiming_normal_(self.pos)
        nn.init.xavier_uniform_(self.w1.weight)
        nn.init.xavier_uniform_(self.w2.weight)

    def from_embeddings(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            # Only valid positions go through the MLP: short histories are mostly padding, and
            # the padded logits are masked below anyway. Same result, a fraction of the work.
            b_sz, length, dim = h.shape
            valid = mask.reshape(-1).nonzero().squeeze(1)
            z = self.w2(torch.tanh(self.w1((h + self.pos).reshape(-1, dim).index_select(0, valid))))  # (N, K)
            logits = z.new_full((b_sz * length, self.n_interests), NEG_INF).index_copy(0, valid, z)
            logits = logits.view(b_sz, length, -1).transpose(1, 2)  # (B, K, L)
        else:
            logits = self.w2(torch.tanh(self.w1(h + self.pos))).transpose(1, 2)  # (B, K, L)
        if self.shared_interest:
            logits = torch.cat([torch.zeros_like(logits[:, :1]), logits[:, 1:]], dim=1)
        logits = logits.masked_fill(~mask.unsqueeze(1), NEG_INF)
        routing = torch.softmax(logits, dim=-1) * mask.unsqueeze(1)  # exact zeros on padding
        return routing @ h, routing  # (B, K, d), (B, K, L)


def squash(s: torch.Tensor) -> torch.Tensor:
    """Capsule non-linearity: keeps the direction, maps the norm into [0, 1)."""
    sq = (s * s).sum(-1, keepdim=True)
    return sq / (1 + sq) * s / torch.sqrt(sq + 1e-9)


class CapsuleInterests(MultiInterestModel):
    """Dynamic routing (B2I) with 3 iterations, softmax over interests (docs/remi.md A.1).

    ``shared=False`` is ComiRec-DR: each position and interest has its own d x d map and the
    routing logits start at zero. ``shared=True`` is MIND: one shared map, logits start from
    N(0, 1) noise (fresh per batch in training, a fixed buffer in eval so inference and the
    exported model are deterministic).
    """

    init_logits: torch.Tensor  # (K, L) buffer, MIND only

    def __init__(
        self,
        n_items: int,
        dim: int,
        n_interests: int,
        seq_len: int,
        shared: bool,
        iterations: int = 3,
        sparse_items: bool = False,
    ):
        super().__init__(n_items, dim, n_interests, seq_len, sparse_items)
        self.shared, self.iterations = shared, iterations
        if shared:
            self.bilinear = nn.Parameter(torch.empty(dim, dim))
            nn.init.xavier_uniform_(self.bilinear)
            self.register_buffer("init_logits", torch.randn(n_interests, seq_len))
        else:
            self.bilinear = nn.Parameter(torch.randn(seq_len, n_interests, dim, dim) / math.sqrt(dim))

    def from_embeddings(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b_sz, length, _ = h.shape
        if self.shared:
            u_hat = (h @ self.bilinear).unsqueeze(1).expand(-1, self.n_interests, -1, -1)  # (B, K, L, d)
            if self.training:
                logits = torch.randn(b_sz, self.n_interests, length, device=h.device, dtype=h.dtype)
            else:
                logits = self.init_logits[:, :length].unsqueeze(0).expand(b_sz, -1, -1)
        else:
            u_hat = torch.einsum("lkij,blj->bkli", self.bilinear[:length], h)  # (B, K, L, d)
            logits = torch.zeros(b_sz, self.n_interests, length, device=h.device, dtype=h.dtype)
        valid = mask.unsqueeze(1).to(h.dtype)  # (B, 1, L)
        u_fixed = u_hat.detach()
        # The routing matrix that RR regularises keeps the gradient of the last routing update,
        # b_T = b_{T-1} + <û, squash(Σ c_{T-1} û)>, through û (docs/remi.md A.10): with every update
        # detached, as in ComiRec, the coupling coefficients depend on no parameter and RR is a
        # constant. The interests still use the coefficients' values only, so the softmax and IHN
        # terms get exactly the gradients they had (a `sampled` run is unchanged).
        routing_grad = torch.is_grad_enabled()
        for it in range(self.iterations - 1):
            c = torch.softmax(logits, dim=1) * valid  # over interests; zero on padding
            u = u_hat if routing_grad and it == self.iterations - 2 else u_fixed  # same values
            v = squash((c.unsqueeze(-1) * u).sum(2))  # (B, K, d)
            logits = logits + (u * v.unsqueeze(2)).sum(-1)
        c = torch.softmax(logits, dim=1) * valid  # (B, K, L)
        v = squash((c.detach().unsqueeze(-1) * u_hat).sum(2))  # (B, K, d), gradient through û only
        routing = c / c.sum(-1, keepdim=True).clamp_min(1e-12)  # renormalised over valid positions
        return v, routing


class MeanPool(MultiInterestModel):
    """Single-interest reference ("YouTube DNN"): masked mean of the history, then a linear map."""

    def __init__(self, n_items: int, dim: int, n_interests: int, seq_len: int, sparse_items: bool = False):
        super().__init__(n_items, dim, 1, seq_len, sparse_items)  # one interest whatever is asked
        self.proj = nn.Linear(dim, dim)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def from_embeddings(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = mask.to(h.dtype) / mask.sum(-1, keepdim=True).clamp_min(1).to(h.dtype)  # (B, L)
        pooled = (weights.unsqueeze(-1) * h).sum(1)
        return self.proj(pooled).unsqueeze(1), weights.unsqueeze(1)


def build_model(
    name: str,
    n_items: int,
    dim: int = 64,
    n_interests: int = 4,
    seq_len: int = 20,
    sparse_items: bool = False,
    shared_interest: bool = False,
) -> MultiInterestModel:
    """Constructs a backbone by its CLI name (see MODELS); ``sparse_items`` for SparseAdam."""
    if shared_interest and name != "comirec-sa":
        raise ValueError(f"shared_interest is a ComiRec-SA option, not {name!r}")
    if name == "comirec-sa":
        return ComiRecSA(n_items, dim, n_interests, seq_len, sparse_items, shared_interest)
    if name == "comirec-dr":
        return CapsuleInterests(n_items, dim, n_interests, seq_len, shared=False, sparse_items=sparse_items)
    if name == "mind":
        return CapsuleInterests(n_items, dim, n_interests, seq_len, shared=True, sparse_items=sparse_items)
    if name == "dnn":
        return MeanPool(n_items, dim, n_interests, seq_len, sparse_items)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
