"""The training scheme as one unit (docs/remi.md A.2): the uniform shared negatives and the loss
that composes sampled softmax, IHN weighting (β with warm-up), accidental-hit removal, RR (λ)
and the embedding-norm penalty.

The trainer only asks for ``scheme.step_loss(model, batch, negatives, step)``; which terms are on
is decided here from the TrainConfig, so ``sampled``, ``ihn``, ``rr`` and ``remi`` are the same code
path with different weights, and any scheme applies to any backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from remi.contract import ItemVocabulary
from training.config import TrainConfig
from training.losses import hard_readout, ihn_loss, interest_overlap, routing_regularization, weighting_scores
from training.models import MultiInterestModel, active_for_lengths


@dataclass(frozen=True)
class TrainBatch:
    """One step's training examples on the training device (docs/remi.md B.5)."""

    history: torch.Tensor  # (B, L) int64 item indices, right-padded with the padding index
    mask: torch.Tensor  # (B, L) bool, True on real items
    target: torch.Tensor  # (B,) int64 item index of the next item


class UniformNegatives:
    """M item indices drawn uniformly per step and shared by the whole batch (the paper's baseline).

    Its own seeded generator, so every rank of a distributed run draws the same negatives.
    """

    def __init__(self, vocabulary: ItemVocabulary, count: int, seed: int):
        self.low, self.high, self.count = vocabulary.first_index(), vocabulary.index_stop(), count
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> torch.Tensor:
        """(M,) int64 item indices (never the padding index)."""
        return torch.randint(self.low, self.high, (self.count,), generator=self.generator)


@dataclass(frozen=True)
class ModelOutput:
    """What the scheme needs from one forward pass.

    History, targets and negatives are looked up in one embedding call (one dense gradient buffer
    for the item table instead of three); the views below slice that one lookup.
    """

    embeddings: torch.Tensor  # (B * L + B + M, d): history rows, then targets, then negatives
    batch_size: int
    seq_len: int
    interest_vectors: torch.Tensor  # (B, K, d)
    routing: torch.Tensor  # (B, K, L)
    active: torch.Tensor  # (B, K) bool: the interests the user has (models.active_interests)
    target_emb: torch.Tensor  # (B, d)
    negative_emb: torch.Tensor  # (M, d)
    # seq_targets all (SASRec's own objective): every valid position of every history as one example,
    # its output (N, d) and the next item's vector and index (N, d), (N,); None otherwise
    seq_users: torch.Tensor | None = None
    seq_target_emb: torch.Tensor | None = None
    seq_targets: torch.Tensor | None = None
    # what interest_div measures: the interests themselves, or (interest_div_grad = tower) the same
    # interests recomputed from the detached history embeddings, so the penalty's gradient stops at
    # the tower; None when interest_div is off
    div_vectors: torch.Tensor | None = None

    def candidate_emb(self) -> torch.Tensor:
        """(B + M, d) the target and negative vectors this batch scores (what emb_l2 penalises)."""
        return self.embeddings[self.batch_size * self.seq_len :]


@dataclass(frozen=True)
class ScoreStats:
    """Diagnostics of the score scale behind the IHN weights (the decay study), one batch."""

    pos_logit: float  # mean positive logit
    neg_logit_std: float  # spread of the negative logits, mean over users
    ihn_effective_negatives: float  # exp(entropy) of the IHN weights; M when uniform
    item_norm: float  # mean norm of the item vectors


@dataclass(frozen=True)
class LossBreakdown:
    """One batch's loss and its parts."""

    total: torch.Tensor  # scalar: softmax + λ·rr [+ interest_div·overlap] + emb_l2·norms, what backward() runs on
    softmax: torch.Tensor  # scalar: the sampled-softmax / IHN term
    rr: torch.Tensor  # scalar: the RR term before λ (0 when the scheme has no RR)
    scores: ScoreStats | None  # only when asked for (they cost a few reductions)


@dataclass(frozen=True)
class TrainingScheme:
    """The weights of every loss term, as the config sets them for its scheme."""

    beta: float  # IHN hardness after warm-up; 0 = plain sampled softmax
    warmup_steps: int  # β ramps linearly from 0 over these steps
    weight_scores: str  # what the IHN weights are computed from (losses.WEIGHT_SCORES)
    detach_weights: bool
    remove_accidental_hits: bool
    lam: float  # RR weight, per-user mean convention; 0 = no RR
    rr_norm: str  # losses.RR_NORMS
    emb_l2: float  # penalty on the batch's item and user vector norms; 0 = none
    rr_scope: str = "interest"  # losses.RR_SCOPES: each interest's row, or their mean (A.11)
    interest_div: float = 0.0  # weight of the interests' pairwise-cosine penalty; 0 = none (A.11)
    interest_div_margin: float = 0.0
    interest_div_grad: str = "all"  # all | tower (A.11)
    rr_skips_first: bool = False  # shared_interest: row 0 is the fixed uniform row, RR only the others (A.11)
    all_positions: bool = False  # seq_targets all: every position predicts its next item (SASRec, A.12)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> TrainingScheme:
        return cls(
            beta=cfg.effective_beta,
            warmup_steps=cfg.ihn_warmup,
            weight_scores=cfg.ihn_scores,
            detach_weights=cfg.ihn_detach,
            remove_accidental_hits=cfg.remove_accidental_hits,
            lam=cfg.effective_lam,
            rr_norm=cfg.rr_norm,
            emb_l2=cfg.emb_l2,
            rr_scope=cfg.rr_scope,
            interest_div=cfg.interest_div,
            interest_div_margin=cfg.interest_div_margin,
            interest_div_grad=cfg.interest_div_grad,
            rr_skips_first=cfg.shared_interest,
            all_positions=cfg.seq_targets == "all",
        )

    def beta_at(self, step: int) -> float:
        """IHN hardness at a step: linear warm-up from 0 over ``warmup_steps``, then constant."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.beta * step / self.warmup_steps
        return self.beta

    def forward(self, model: MultiInterestModel, batch: TrainBatch, negatives: torch.Tensor) -> ModelOutput:
        """The model on the batch's histories, plus the target and negative vectors."""
        b_sz, length = batch.history.shape
        emb = model.item_emb(torch.cat([batch.history.reshape(-1), batch.target, negatives]))
        h = emb[: b_sz * length].view(b_sz, length, -1) * batch.mask.unsqueeze(-1).to(emb.dtype)  # (B, L, d)
        target_emb = emb[b_sz * length : b_sz * (length + 1)]  # (B, d)
        negative_emb = emb[b_sz * (length + 1) :]  # (M, d)
        if self.all_positions:
            return self._forward_all_positions(model, batch, emb, h, target_emb, negative_emb)
        interest_vectors, routing = model.from_embeddings(h, batch.mask)  # (B, K, d), (B, K, L)
        div_vectors = None
        if self.interest_div > 0:
            # Pulling a user's interests apart through the item table pushes the items of one history
            # apart, against what the softmax term learns from them (docs/remi.md A.11); "tower" keeps
            # the table out of this term. (MIND's second pass draws its own routing noise.)
            tower = self.interest_div_grad == "tower"
            div_vectors = model.from_embeddings(h.detach(), batch.mask)[0] if tower else interest_vectors
        active = model.interest_mask(batch.mask)
        return ModelOutput(
            emb, b_sz, length, interest_vectors, routing, active, target_emb, negative_emb, div_vectors=div_vectors
        )

    def _forward_all_positions(
        self,
        model: MultiInterestModel,
        batch: TrainBatch,
        emb: torch.Tensor,
        h: torch.Tensor,
        target_emb: torch.Tensor,
        negative_emb: torch.Tensor,
    ) -> ModelOutput:
        """SASRec's objective: the output after items 1..i predicts item i + 1, for every valid i; the
        newest position predicts the drawn target. Histories are right-padded, so the next item of
        position i is history[i + 1], except at the newest position n - 1, where it is the target."""
        with_sequence = getattr(model, "with_sequence", None)
        if with_sequence is None:
            raise ValueError("all-position targets need a causal encoder (--model sasrec, or comirec-sa with blocks)")
        user, routing, out = with_sequence(h, batch.mask)  # (B, K, d), (B, K, L), (B, L, K, d)
        b_sz, length, dim = h.shape
        newest = batch.mask.sum(-1)  # (B,) n: the target goes to slot n of the shifted sequence
        rows = torch.arange(b_sz, device=h.device)
        next_emb = torch.cat([h, h.new_zeros(b_sz, 1, dim)], dim=1).index_put((rows, newest), target_emb)[:, 1:]
        next_ids = torch.cat([batch.history, batch.history.new_zeros(b_sz, 1)], dim=1)
        next_ids = next_ids.index_put((rows, newest), batch.target)[:, 1:]
        valid = batch.mask  # position i < n has a next item (history[i + 1] or the target)
        # prefix i has i + 1 items: its interests are those the rule gives that length
        prefix_len = torch.arange(1, length + 1, device=h.device).expand(b_sz, -1)
        prefix_active = active_for_lengths(prefix_len, out.shape[2], model.adaptive)  # (B, L, K)
        seq_target_emb = next_emb[valid]  # (N, d)
        seq_users = hard_readout(out[valid], seq_target_emb, prefix_active[valid])  # (N, d)
        active = model.interest_mask(batch.mask)
        return ModelOutput(
            emb, b_sz, length, user, routing, active, target_emb, negative_emb,
            seq_users=seq_users, seq_target_emb=seq_target_emb, seq_targets=next_ids[valid],
        )  # fmt: skip

    def loss(
        self,
        output: ModelOutput,
        batch: TrainBatch,
        negatives: torch.Tensor,
        step: int,
        item_vectors: torch.Tensor | None = None,
    ) -> LossBreakdown:
        """The composed loss of one batch; score diagnostics when ``item_vectors`` (I, d) is given.

        The hard readout picks the interest nearest the target (docs/remi.md B.1.3); the softmax
        term scores it against the target and the shared negatives, IHN-weighted when β > 0.
        """
        beta = self.beta_at(step)
        if output.seq_users is not None and output.seq_target_emb is not None and output.seq_targets is not None:
            user, target_emb, targets = output.seq_users, output.seq_target_emb, output.seq_targets  # (N, d)
        else:
            user = hard_readout(output.interest_vectors, output.target_emb, output.active)  # (B, d)
            target_emb, targets = output.target_emb, batch.target
        pos_logit = (user * target_emb).sum(-1)  # (B,)
        neg_logits = user @ output.negative_emb.T  # (B, M)
        weights = None if beta == 0 else weighting_scores(self.weight_scores, user, output.negative_emb, neg_logits)
        valid = negatives.unsqueeze(0) != targets.unsqueeze(1) if self.remove_accidental_hits else None
        softmax = ihn_loss(pos_logit, neg_logits, beta, weights, valid, self.detach_weights)
        total = softmax
        rr = torch.zeros((), dtype=softmax.dtype)
        if self.lam > 0:
            dim = output.embeddings.shape[-1]  # d: the authors' RR divides by it
            routing = output.routing[:, 1:] if self.rr_skips_first else output.routing
            rr = routing_regularization(routing, batch.mask, dim, self.rr_norm, self.rr_scope)
            total = total + self.lam * rr
        if self.interest_div > 0:
            # RR's flat rows are the same row for every interest, so the interests become copies of
            # the history mean; this keeps them apart (docs/remi.md A.11).
            vectors = output.interest_vectors if output.div_vectors is None else output.div_vectors
            total = total + self.interest_div * interest_overlap(vectors, self.interest_div_margin)
        if self.emb_l2 > 0:
            # Scores grow with the norms during training until the softmax is over-confident and
            # valid recall decays; penalising the norms of the vectors this batch uses curbs that.
            norms = torch.cat([(output.candidate_emb() ** 2).sum(-1), (user**2).sum(-1)])
            total = total + self.emb_l2 * norms.mean()
        scores = None
        if item_vectors is not None:
            scores = _score_stats(pos_logit, neg_logits, beta, weights, item_vectors)
        return LossBreakdown(total, softmax, rr, scores)

    def step_loss(
        self,
        model: MultiInterestModel,
        batch: TrainBatch,
        negatives: torch.Tensor,
        step: int,
        with_scores: bool = False,
    ) -> LossBreakdown:
        """Forward and loss of one training step."""
        output = self.forward(model, batch, negatives)
        with torch.no_grad():
            item_vectors = model.item_vectors() if with_scores else None
        return self.loss(output, batch, negatives, step, item_vectors)


@torch.no_grad()
def _score_stats(
    pos_logit: torch.Tensor,
    neg_logits: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None,
    item_vectors: torch.Tensor,
) -> ScoreStats:
    log_w = torch.log_softmax(beta * (neg_logits if weights is None else weights), -1)
    return ScoreStats(
        pos_logit=pos_logit.mean().item(),
        neg_logit_std=neg_logits.std(-1).mean().item(),
        ihn_effective_negatives=torch.exp(-(log_w.exp() * log_w).sum(-1)).mean().item(),
        item_norm=item_vectors.norm(dim=-1).mean().item(),
    )
