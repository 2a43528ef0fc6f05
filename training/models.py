"""Multi-interest user towers: ComiRec-SA, ComiRec-DR, MIND, and the mean-pooling reference.

Every backbone maps a padded history to K interest vectors and a K x L routing matrix::

    interest_vectors, routing = model(item_ids, mask)   # (B, L), (B, L) -> (B, K, d), (B, K, L)

Routing rows are distributions over the valid history positions (zero on padding), so the
REMI routing regulariser and the collapse diagnostics apply to any backbone. Padding
never influences an output: its embedding row is zero and every path multiplies by the mask.

SASRec (Kang & McAuley, ICDM 2018) is the single-vector sequential baseline: a causal
transformer over the history whose last position is the user vector (K = 1). The same encoder
blocks can sit under ComiRec-SA's K-head attention (``encoder_blocks`` > 0, docs/remi.md A.12).

References: Cen et al., "Controllable Multi-Interest Framework for Recommendation" (KDD 2020,
ComiRec); Li et al., "Multi-Interest Network with Dynamic Routing" (CIKM 2019, MIND); Xie et al.,
"Rethinking Multi-Interest Learning for Candidate Matching" (RecSys 2023, REMI). Deviations from
the reference scripts are the ones docs/remi.md Part A takes (routing softmax over interests, zeroed
padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from remi.contract import ItemVocabulary
from training.hugepages import huge_page_copy

if TYPE_CHECKING:
    from training.config import TrainConfig

MODELS = ("comirec-sa", "comirec-dr", "mind", "dnn", "sasrec")
ADAPTIVE_RULES = ("off", "log2", "log3", "log4")  # how many of the K interests a user gets (active_interests)
NEG_INF = -1e9  # finite: a fully padded row must not produce NaN


def active_interests(mask: torch.Tensor, n_interests: int, rule: str = "off") -> torch.Tensor:
    """(B, L) history mask -> (B, K) bool: the interests a user has (docs/remi.md A.13).

    ``off``: all K. ``log2``: MIND's rule, max(1, min(K, ceil(log2 n))) for a history of n items,
    always the first ones, so interest 0 is every user's and the later ones serve only the
    longer histories that have more to say. ``log3`` / ``log4``: the same with base 3 / 4, for
    short-history catalogues where log2 still gives most users most interests (docs/remi.md
    A.13). Written with comparisons only (no log), so that it is the same integer arithmetic in
    PyTorch, in the exported ONNX graph and in numpy: slot j (0-based) is active iff
    ceil(log_b n) >= j + 1  <=>  n > b^j.
    """
    return active_for_lengths(mask.sum(-1), n_interests, rule)


def active_for_lengths(n: torch.Tensor, n_interests: int, rule: str = "off") -> torch.Tensor:
    """(...) history lengths -> (..., K) bool, the rule of :func:`active_interests`."""
    slots = torch.arange(n_interests, device=n.device)
    if rule == "off":
        return torch.ones(*n.shape, n_interests, dtype=torch.bool, device=n.device)
    if rule not in ADAPTIVE_RULES:
        raise ValueError(f"unknown adaptive-interest rule {rule!r}; choose one of {', '.join(ADAPTIVE_RULES)}")
    return (slots == 0) | (n.unsqueeze(-1) > torch.pow(int(rule[3:]), slots))


class MultiInterestModel(nn.Module):
    """Shared item table and the common interface; subclasses implement :meth:`from_embeddings`."""

    adaptive: str = "off"  # active_interests rule; set by model_from_config

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

    def interest_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, K) bool: which interests this user has (the rule of ``adaptive``)."""
        return active_interests(mask, self.n_interests, self.adaptive)

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


@dataclass(frozen=True)
class EncoderSpec:
    """Self-attention blocks under a backbone (docs/remi.md A.12); ``blocks`` 0 = none."""

    blocks: int = 0
    heads: int = 1
    dropout: float = 0.2
    causal: bool = False  # under ComiRec-SA: positions read only older items (trained on every prefix)


class SelfAttentionBlock(nn.Module):
    """One pre-LayerNorm transformer block: x + Attn(LN(x)), then x + FFN(LN(x)).

    Attention is written out (not nn.MultiheadAttention) so that the ONNX graph is plain
    MatMul/Softmax and the mask semantics are ours: ``allowed`` (B, L, L) says which keys a
    query may read, and always includes the query itself, so no row is all masked.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)
        self.attn_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d), (B, L, L) bool -> (B, L, d), the head-averaged attention (B, L, L)."""
        b_sz, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b_sz, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, H, L, L)
        scores = scores.masked_fill(~allowed.unsqueeze(1), NEG_INF)
        attn = torch.softmax(scores, dim=-1)
        mixed = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b_sz, length, dim)
        x = x + self.drop(self.out(mixed))
        x = x + self.drop(self.ffn(self.norm2(x)))
        return x, attn.mean(1)


class SelfAttentionEncoder(nn.Module):
    """Item embeddings + recency positions -> transformer blocks -> LayerNorm, zero on padding.

    Positions count back from the most recent item (0 = the last one), so with the right-padded
    histories of the training convention the last item always has the same position, as it has
    in SASRec's left-padded inputs. ``causal``: a position reads only itself and older items
    (SASRec); otherwise every valid position reads every other (under ComiRec-SA's heads).
    """

    def __init__(self, dim: int, seq_len: int, spec: EncoderSpec, causal: bool):
        super().__init__()
        self.causal, self.scale = causal, math.sqrt(dim)
        self.pos = nn.Embedding(seq_len, dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.drop = nn.Dropout(spec.dropout)
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, spec.heads, spec.dropout) for _ in range(spec.blocks))
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d) zero on padding, (B, L) -> outputs (B, L, d) zero on padding, last block's attention."""
        length = h.shape[1]
        positions = torch.arange(length, device=h.device)
        n_valid = mask.sum(-1, keepdim=True)  # (B, 1)
        recency = (n_valid - 1 - positions).clamp(min=0)  # (B, L); padding slots get 0, then are zeroed
        keep = mask.unsqueeze(-1).to(h.dtype)
        x = self.drop(h * self.scale + self.pos(recency)) * keep
        allowed = mask.unsqueeze(1).expand(-1, length, -1)  # (B, Lq, Lk): valid keys
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=h.device).tril()
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=h.device)
        attn = h.new_zeros(h.shape[0], length, length)
        for block in self.blocks:
            x, attn = block(x, allowed)
            x = x * keep
        return self.norm(x) * keep, attn


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
        encoder: EncoderSpec | None = None,
    ):
        super().__init__(n_items, dim, n_interests, seq_len, sparse_items)
        # encoder: transformer blocks whose outputs the K heads read instead of the raw embeddings
        self.encoder = (
            SelfAttentionEncoder(dim, seq_len, encoder, causal=encoder.causal) if encoder and encoder.blocks else None
        )
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
        if self.encoder is not None:
            h = self.encoder(h, mask)[0]
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

    def with_sequence(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Over a causal encoder: the K interests after every prefix of the history, (B, L, K, d),
        beside :meth:`from_embeddings`'s outputs (the full history = the newest prefix).

        Prefix i's interest k reads positions j <= i: softmax_j over the same logits, cut at i.
        The encoder's outputs at j <= i depend on items <= j only, so prefix i's interests are
        a function of its own items, as SASRec's position i is (docs/remi.md A.12).
        """
        if self.encoder is None or not self.encoder.causal:
            raise ValueError("interests per prefix need a causal encoder under ComiRec-SA (seq_targets all)")
        out = self.encoder(h, mask)[0]  # (B, L, d)
        length = h.shape[1]
        logits = self.w2(torch.tanh(self.w1(out + self.pos)))  # (B, L, K)
        if self.shared_interest:
            logits = torch.cat([torch.zeros_like(logits[..., :1]), logits[..., 1:]], dim=-1)
        past = torch.ones(length, length, dtype=torch.bool, device=h.device).tril()
        allowed = (past.unsqueeze(0) & mask.unsqueeze(1)).unsqueeze(2)  # (B, Li, 1, Lj)
        per_prefix = logits.transpose(1, 2).unsqueeze(1).masked_fill(~allowed, NEG_INF)  # (B, Li, K, Lj)
        routing_all = torch.softmax(per_prefix, dim=-1) * allowed
        interests = routing_all @ out.unsqueeze(1)  # (B, Li, K, d)
        newest = (mask.sum(-1) - 1).clamp(min=0)
        rows = torch.arange(h.shape[0], device=h.device)
        return interests[rows, newest], routing_all[rows, newest], interests


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


class SASRec(MultiInterestModel):
    """SASRec: a causal transformer over the history; the last valid position's output is the one
    user vector (K = 1). Its routing row is the last block's attention of that position, for the
    diagnostics only: RR has no interests to keep apart here, so it refuses RR (training.config).
    """

    def __init__(self, n_items: int, dim: int, seq_len: int, encoder: EncoderSpec, sparse_items: bool = False):
        super().__init__(n_items, dim, 1, seq_len, sparse_items)
        if encoder.blocks < 1:
            raise ValueError("sasrec needs at least one self-attention block")
        self.encoder = SelfAttentionEncoder(dim, seq_len, encoder, causal=True)

    def from_embeddings(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        user, routing, _ = self.with_sequence(h, mask)
        return user, routing

    def with_sequence(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`from_embeddings`, plus every position's output (B, L, 1, d): position i is the
        user after the first i + 1 items, what SASRec's own objective trains (``seq_targets`` all)."""
        out, attn = self.encoder(h, mask)  # (B, L, d), (B, L, L)
        last = (mask.sum(-1) - 1).clamp(min=0)  # (B,) the most recent item's slot
        pick = last.view(-1, 1, 1)
        user = out.gather(1, pick.expand(-1, 1, out.shape[-1]))  # (B, 1, d)
        routing = attn.gather(1, pick.expand(-1, 1, attn.shape[-1])) * mask.unsqueeze(1)  # (B, 1, L)
        return user, routing, out.unsqueeze(2)


def build_model(
    name: str,
    n_items: int,
    dim: int = 64,
    n_interests: int = 4,
    seq_len: int = 20,
    sparse_items: bool = False,
    shared_interest: bool = False,
    encoder: EncoderSpec | None = None,
) -> MultiInterestModel:
    """Constructs a backbone by its CLI name (see MODELS); ``sparse_items`` for SparseAdam."""
    if shared_interest and name != "comirec-sa":
        raise ValueError(f"shared_interest is a ComiRec-SA option, not {name!r}")
    if encoder and encoder.blocks and name not in ("comirec-sa", "sasrec"):
        raise ValueError(f"self-attention blocks go under comirec-sa or sasrec, not {name!r}")
    if name == "comirec-sa":
        return ComiRecSA(n_items, dim, n_interests, seq_len, sparse_items, shared_interest, encoder)
    if name == "sasrec":
        return SASRec(n_items, dim, seq_len, encoder or EncoderSpec(blocks=2), sparse_items)
    if name == "comirec-dr":
        return CapsuleInterests(n_items, dim, n_interests, seq_len, shared=False, sparse_items=sparse_items)
    if name == "mind":
        return CapsuleInterests(n_items, dim, n_interests, seq_len, shared=True, sparse_items=sparse_items)
    if name == "dnn":
        return MeanPool(n_items, dim, n_interests, seq_len, sparse_items)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def model_from_config(cfg: TrainConfig, n_items: int, sparse_items: bool = False) -> MultiInterestModel:
    """The backbone a TrainConfig describes (training, ``remi evaluate``/``export`` rebuild it alike)."""
    # a multi-interest model trained on every prefix reads a causal encoder (ComiRec-SA's prefixes)
    causal = cfg.seq_targets == "all"
    encoder = EncoderSpec(cfg.encoder_blocks, cfg.encoder_heads, cfg.dropout, causal)
    model = build_model(
        cfg.model, n_items, cfg.dim, cfg.interests, cfg.seq_len, sparse_items, cfg.shared_interest, encoder
    )
    model.adaptive = cfg.adaptive_interests
    return model
