"""The trainer's one config object.

Values come from (highest first) explicit arguments (CLI flags), a JSON config file
(``remi train --config``, e.g. what ``remi tune`` writes), environment variables with the
prefix ``REMI_TRAIN_``, then the defaults below (docs/remi.md A.7).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from remi.errors import RemiError

ModelName = Literal["comirec-sa", "comirec-dr", "mind", "dnn", "sasrec"]
SchemeName = Literal["sampled", "ihn", "rr", "remi"]
IhnScores = Literal["raw", "cosine", "standardized"]
RrNorm = Literal["authors", "valid"]
RrScope = Literal["interest", "mean"]
DivGrad = Literal["all", "tower"]
AdaptiveRule = Literal["off", "log2", "log3", "log4"]
SeqTargets = Literal["last", "all"]
OptimizerName = Literal["adam", "sparse-adam", "rowwise-adagrad"]
LrSchedule = Literal["constant", "cosine"]
# what `--scheme sampled` uses for the recommended model's regularisers unless they are set
PLAIN_BASELINE: dict[str, Any] = {"emb_l2": 0.0, "lr_schedule": "constant"}
# per-backbone defaults on top of the recommended model's (configs/default.json "models"; a test
# checks they agree): MIND with emb_l2 0.1 made its interests copies and lost 8-16% test R@50 to
# emb_l2 0 on three of the four shared datasets (docs/results.md "REMI on every backbone")
# SASRec: two blocks (its paper's size), IHN without RR (no interests to act on there) and
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mind": {"emb_l2": 0.0},
    # its own objective (every position predicts its next item): valid R@50 .149 at 3k steps on amazon_beauty
    # against .103 with the newest position only (sampled, seed 2021), which peaked at .130
    "sasrec": {"encoder_blocks": 2, "scheme": "ihn", "seq_targets": "all"},
}
SINGLE_VECTOR_MODELS: tuple[str, ...] = ("dnn", "sasrec")  # one interest whatever --interests says
ENCODER_MODELS: tuple[str, ...] = ("comirec-sa", "sasrec")  # the backbones that take self-attention blocks
SPARSE_OPTIMIZERS: tuple[str, ...] = ("sparse-adam", "rowwise-adagrad")  # sparse item-table gradients
EvalIndexName = Literal["exact", "ivfpq", "hnsw", "auto"]
ROWWISE_ADAGRAD_LR = 0.02  # item_lr unset: best valid R@50 of 0.02, 0.05, 0.1 on amazon_beauty


class TrainConfig(BaseSettings):
    """Everything that defines a training run; saved as ``config.json`` beside the checkpoint.

    Each field is also a ``remi train`` flag of the same name (generated from this class), with
    its description as help.
    """

    model_config = SettingsConfigDict(env_prefix="REMI_TRAIN_", extra="forbid")

    # data
    data: str = Field(
        "",
        description="Interactions user_id,item_id,timestamp: a CSV(.gz), a Parquet file or a folder of Parquet parts.",
    )
    split_file: str | None = Field(None, description="CSV user_id,part (train/valid/test) fixing the user split.")
    min_count: int = Field(5, ge=1, description="k-core threshold for users and items.")
    kcore_single_pass: bool = Field(
        False, description="One k-core filter pass (the reference scripts) instead of filtering until stable."
    )
    split_seed: int = Field(1230, description="Seed of the 80/10/10 user split.")
    prep_memory_gb: float = Field(
        4.0, gt=0, description="Memory limit of data preparation (DuckDB, GB); beyond it, prep spills to $TMPDIR."
    )
    min_history: int = Field(4, ge=1, description="Smallest cut point when sampling training examples.")
    target_window: int = Field(
        1,
        ge=1,
        description="Training target drawn uniformly from the next N items after the cut (1 = the next item).",
    )

    # model
    model: ModelName = Field(
        "comirec-sa",
        description=(
            "Backbone (dnn: mean-pooled, one interest; sasrec: causal self-attention, one vector, "
            "schemes sampled or ihn)."
        ),
    )
    dim: int = Field(64, ge=2, description="Embedding size d.")
    interests: int = Field(4, ge=1, description="Number of interests K.")
    seq_len: int = Field(20, ge=1, description="History length L.")
    adaptive_interests: AdaptiveRule = Field(
        "off",
        description=(
            "How many of the K interests a user gets: off = all K; log2 = max(1, min(K, ceil(log2 n))) for n "
            "history items (MIND's rule); log3 / log4 the same with base 3 / 4 (fewer interests for short histories); "
            "in training, evaluation, the exported interest mask and serving."
        ),
    )
    encoder_blocks: int = Field(
        0,
        ge=0,
        description=(
            "Self-attention blocks over the history: under ComiRec-SA's interest heads (0 = none, the paper's "
            "model); SASRec's own encoder (2 unless set)."
        ),
    )
    seq_targets: SeqTargets = Field(
        "last",
        description=(
            "The next item of the newest position only (last, every backbone's objective) or of every position "
            "of the history (all, SASRec's own: one example per prefix, same negatives); all needs sasrec, or "
            "comirec-sa with encoder_blocks, whose blocks then become causal."
        ),
    )
    encoder_heads: int = Field(1, ge=1, description="Attention heads per self-attention block (must divide dim).")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout inside the self-attention blocks (training only).")

    # scheme
    # The defaults of scheme, beta, lam, ihn_detach and lr are configs/default.json's "train" values
    # (a test checks it), so a bare `remi train` trains the recommended model; beta, lam and
    # ihn_detach are ignored by the schemes without their term (effective_beta, effective_lam), so
    # `--scheme sampled` alone is the baseline (docs/remi.md A.7).
    scheme: SchemeName = Field("remi", description="Training scheme (remi = ihn + rr; sampled = the baseline).")
    beta: float = Field(0.05, ge=0, description="IHN hardness beta (ihn, remi); 0 = plain sampled softmax.")
    lam: float = Field(
        20000.0, ge=0, description="RR weight lambda (rr, remi), per-user mean (authors' 100 summed over 128 = 12800)."
    )
    ihn_scores: IhnScores = Field("raw", description="Scores the IHN weights are computed from.")
    ihn_detach: bool = Field(True, description="Stop the gradient through the IHN weights (ihn, remi).")
    ihn_warmup: int = Field(0, ge=0, description="Steps over which beta ramps up linearly from 0.")
    remove_accidental_hits: bool = Field(False, description="Drop sampled negatives equal to the positive.")
    rr_norm: RrNorm = Field(
        "authors", description="RR normalisation: authors = 1/L mean, /d; valid = per valid length."
    )
    emb_l2: float = Field(
        0.1,
        ge=0,
        description=(
            "L2 penalty on the batch's item and user vectors (against norm growth); with --scheme sampled or "
            "--model mind 0 unless set."
        ),
    )
    # interests that stay distinct (docs/remi.md#a11-interests-that-stay-distinct); both off by default
    rr_scope: RrScope = Field(
        "interest",
        description=(
            "What RR flattens: interest = each interest's routing row (the reference); mean = the interests' "
            "average row, so the history as a whole is used but each interest may draw on part of it."
        ),
    )
    shared_interest: bool = Field(
        False,
        description=(
            "ComiRec-SA: interest 0 attends uniformly to the whole history (the history mean, what RR's flat rows "
            "converge to) and RR skips it; the other K-1 stay free to pick out parts of the history."
        ),
    )
    interest_div: float = Field(
        0.0, ge=0, description="Weight of the penalty on the pairwise cosine of a user's interests; 0 = none."
    )
    interest_div_margin: float = Field(
        0.0, ge=0, lt=1, description="interest_div penalises only the cosine above this margin."
    )
    interest_div_grad: DivGrad = Field(
        "all",
        description=(
            "What interest_div may change: all = the tower and the item embeddings; tower = the tower only "
            "(item embeddings held fixed for this term, so it cannot push a user's items apart)."
        ),
    )

    # optimisation
    batch_size: int = Field(128, ge=1, description="Training batch size (the global batch under --nproc).")
    negatives: int = Field(1280, ge=1, description="Sampled negatives per batch (shared).")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    lr_schedule: LrSchedule = Field(
        "cosine",
        description=(
            "Learning rate over the step budget: constant, or cosine = from lr down to 0 at max_steps "
            "(every optimiser, item_lr included); with --scheme sampled constant unless set."
        ),
    )
    weight_decay: float = Field(
        0.0,
        ge=0,
        description="Adam weight decay (L2 on every parameter); adam only (sparse optimisers: use --emb-l2).",
    )
    optimizer: OptimizerName = Field(
        "adam",
        description=(
            "Optimiser: adam; for large catalogues sparse-adam (SparseAdam) or rowwise-adagrad (one state "
            "scalar per row, --item-lr) on the item table, updating only the rows a batch touches, dense "
            "Adam on the rest. Sparse ones: no weight decay, --nproc on CPU only."
        ),
    )
    item_lr: float | None = Field(
        None,
        gt=0,
        description=f"Learning rate of the item table with rowwise-adagrad (unset: {ROWWISE_ADAGRAD_LR}).",
    )
    eval_index: EvalIndexName = Field(
        "auto",
        description=(
            "Search behind validation during training: exact, or an approximate index of index/build.py "
            "(ivfpq: nlist sqrt(items), the cheapest to rebuild at every evaluation; hnsw: slow to build); "
            "auto = exact up to --eval-exact-max-items items, ivfpq above. Final valid/test scores stay exact."
        ),
    )
    eval_exact_max_items: int = Field(
        1_000_000, ge=1, description="With --eval-index auto: largest catalogue validated by exact search."
    )
    max_steps: int = Field(100_000, ge=1, description="Step budget.")
    max_minutes: float | None = Field(None, gt=0, description="Wall-clock budget in minutes (unset: none).")
    eval_every: int = Field(1000, ge=1, description="Evaluate on valid users every N steps.")
    patience: int = Field(20, ge=1, description="Evaluations without a better valid recall@50 before stopping.")
    seed: int = Field(2021, description="Seed of initialisation and sampling.")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (unset: torch's choice).")
    progress_seconds: float = Field(
        30.0, ge=0, description="Without a progress bar: seconds between progress lines on stderr; 0 = none."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.model in SINGLE_VECTOR_MODELS:
            self.interests = 1
        for name, value in MODEL_DEFAULTS.get(self.model, {}).items():
            if name not in self.model_fields_set:  # the backbone's default, unless asked otherwise
                setattr(self, name, value)
        if self.scheme == "sampled":
            # The defaults of emb_l2 and lr_schedule are the recommended model's (configs/default.json);
            # `sampled` is the plain baseline of the paper, so it takes them only when asked to.
            for name, plain in PLAIN_BASELINE.items():
                if name not in self.model_fields_set:
                    setattr(self, name, plain)
        if self.optimizer in SPARSE_OPTIMIZERS and self.weight_decay > 0:
            # SparseAdam has no weight decay, and decaying only the rows a batch touches would
            # shrink popular items more than rare ones: not the L2 the flag promises.
            raise ValueError(f"weight_decay does not apply to {self.optimizer}; use emb_l2 to penalise item norms")
        if self.shared_interest and (self.model != "comirec-sa" or self.interests < 2):
            raise ValueError("shared_interest needs --model comirec-sa and at least 2 interests")
        if self.model == "sasrec" and self.scheme in ("rr", "remi"):
            raise ValueError(
                f"scheme {self.scheme} adds RR, which has no routing to act on in sasrec (one vector, no "
                "interests); use --scheme ihn (the default for sasrec) or sampled"
            )
        if self.encoder_blocks and self.model not in ENCODER_MODELS:
            raise ValueError(f"encoder_blocks applies to {' and '.join(ENCODER_MODELS)}, not {self.model}")
        if self.seq_targets == "all" and not (
            self.model == "sasrec" or (self.model == "comirec-sa" and self.encoder_blocks >= 1)
        ):
            raise ValueError(
                "seq_targets all needs a causal encoder: --model sasrec, or comirec-sa with encoder_blocks"
            )
        if self.model == "sasrec" and self.encoder_blocks < 1:
            raise ValueError("sasrec needs encoder_blocks >= 1")
        if self.encoder_blocks and self.dim % self.encoder_heads:
            raise ValueError(f"dim {self.dim} must be divisible by encoder_heads {self.encoder_heads}")
        if self.item_lr is not None and self.optimizer != "rowwise-adagrad":
            raise ValueError(f"item_lr applies to rowwise-adagrad only, not {self.optimizer} (which uses lr)")
        return self

    def eval_search(self, n_items: int) -> str:
        """The search validation uses for a catalogue of ``n_items`` (exact, ivfpq or hnsw)."""
        if self.eval_index != "auto":
            return self.eval_index
        return "exact" if n_items <= self.eval_exact_max_items else "ivfpq"

    @property
    def table_lr(self) -> float:
        """The item table's learning rate under rowwise-adagrad."""
        return self.item_lr if self.item_lr is not None else ROWWISE_ADAGRAD_LR

    @property
    def effective_beta(self) -> float:
        return self.beta if self.scheme in ("ihn", "remi") else 0.0

    @property
    def effective_lam(self) -> float:
        return self.lam if self.scheme in ("rr", "remi") else 0.0


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Builds a TrainConfig from an optional JSON file plus explicit overrides (None = unset)."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise RemiError(f"config file not found: {p}")
        try:
            loaded = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise RemiError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(loaded, dict):
            raise RemiError(f"{p}: expected a JSON object of settings")
        values.update(loaded.get("train", loaded))
        # a default file's per-backbone settings ("models", configs/default.json) for the model trained
        model = overrides.get("model") or values.get("model") or TrainConfig.model_fields["model"].default
        per_model = loaded.get("models", {}) if "train" in loaded else {}
        if isinstance(per_model, dict) and isinstance(per_model.get(model), dict):
            values.update(per_model[model])
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "config"
        raise RemiError(f"invalid setting {field}: {err['msg']}") from exc
