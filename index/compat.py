"""Whether a new model may replace the one serving: the check that stops an unrelated model going live.

A version carries a model and its catalogue, and the service swaps both at once. A retrain over
the same catalogue (or a grown one) keeps the users' histories readable; another model's artifacts
(a demo, another tenant's, a run on the wrong data) do not: every item of every stored history is
unknown to it, so every user gets cold-start answers, and filters on attributes it lacks get 422.
Nothing in the new folder alone says so, only a comparison with the version it replaces:

* catalogue overlap: the share of the serving catalogue's items the new model knows;
* history coverage: the share of the serving model's sample histories (held-out users, the
  stand-in for live ones) that keep at least one item once mapped through their raw ids to the
  new catalogue, i.e. that do not turn into cold starts;
* attribute schema: attributes the serving model has that the new one drops or changes the kind of.

:func:`compare_artifacts` measures, :func:`replacement_refusal` judges against the limits
(:class:`~index.params.IndexSettings` ``min_catalogue_overlap`` / ``min_history_coverage``), and
:func:`check_replacement` raises; ``remi reindex`` calls it (skipped with ``--force``), and any
other command that moves ``current`` to a new model should too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from index.params import MIN_CATALOGUE_OVERLAP, MIN_HISTORY_COVERAGE
from remi.contract import (
    ITEM_IDS,
    NPZ_HISTORY,
    NPZ_MASK,
    SAMPLE_HISTORIES,
    ArtifactError,
    ArtifactManifest,
    ItemVocabulary,
    parse_item_ids,
    read_artifact_manifest,
)
from remi.errors import RemiError


@dataclass(frozen=True)
class Replacement:
    """The figures of one model replacing another (see the module docstring)."""

    old_model: str
    new_model: str
    old_items: int
    new_items: int
    kept_items: int  # items of the old catalogue that the new one has
    sample_histories: int  # the old model's sample histories that hold at least one item
    readable_histories: int  # of those, the ones with at least one item the new model knows
    lost_attributes: list[str] = field(default_factory=list)  # "name (kind)" dropped or changed

    @property
    def catalogue_overlap(self) -> float:
        return self.kept_items / self.old_items if self.old_items else 1.0

    @property
    def history_coverage(self) -> float:
        return self.readable_histories / self.sample_histories if self.sample_histories else 1.0


def _item_ids(folder: Path, manifest: ArtifactManifest) -> list[str]:
    return parse_item_ids((folder / ITEM_IDS).read_bytes(), manifest.n_items, folder / ITEM_IDS)


def _lost_attributes(old: ArtifactManifest, new: ArtifactManifest) -> list[str]:
    have = new.item_attributes or {}
    return [f"{name} ({kind})" for name, kind in (old.item_attributes or {}).items() if have.get(name) != kind]


def compare_artifacts(old_folder: str | Path, new_folder: str | Path) -> Replacement:
    """Measures how much of the model in ``old_folder`` (the one serving) the one in ``new_folder`` keeps.

    Reads the manifests (files checked by size, not hash: the caller validates what it publishes),
    both item id lists and the old model's sample histories: seconds at a million items.
    """
    old_folder, new_folder = Path(old_folder), Path(new_folder)
    old = read_artifact_manifest(old_folder, check_hash=False)
    new = read_artifact_manifest(new_folder, check_hash=False)
    old_ids = _item_ids(old_folder, old)
    known = set(_item_ids(new_folder, new))
    # Old item index -> whether the new model knows that item (index 0, the padding, never counts).
    knows = ItemVocabulary.add_padding(np.fromiter((raw in known for raw in old_ids), dtype=bool, count=len(old_ids)))
    try:
        with np.load(old_folder / SAMPLE_HISTORIES, allow_pickle=False) as sample:
            history, mask = sample[NPZ_HISTORY], sample[NPZ_MASK].astype(bool)
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{old_folder / SAMPLE_HISTORIES}: unreadable ({str(exc).splitlines()[0]})") from exc
    history = np.clip(np.asarray(history, dtype=np.int64), 0, len(old_ids))
    present = mask & (history > ItemVocabulary.PADDING)
    readable = (present & knows[history]).any(axis=1)
    counted = present.any(axis=1)
    return Replacement(
        old_model=old.model_version,
        new_model=new.model_version,
        old_items=len(old_ids),
        new_items=len(known),
        kept_items=int(knows.sum()),
        sample_histories=int(counted.sum()),
        readable_histories=int((readable & counted).sum()),
        lost_attributes=_lost_attributes(old, new),
    )


def replacement_refusal(
    figures: Replacement,
    min_catalogue_overlap: float = MIN_CATALOGUE_OVERLAP,
    min_history_coverage: float = MIN_HISTORY_COVERAGE,
) -> str | None:
    """Why the replacement is too drastic to make without ``--force`` (one line, every figure), or None."""
    problems = []
    if figures.catalogue_overlap < min_catalogue_overlap:
        problems.append(f"catalogue overlap below --min-catalogue-overlap {min_catalogue_overlap}")
    if figures.history_coverage < min_history_coverage:
        problems.append(f"history coverage below --min-history-coverage {min_history_coverage}")
    if figures.lost_attributes:
        problems.append(
            f"drops item attributes {', '.join(figures.lost_attributes)} (filtered requests on them would get 422)"
        )
    if not problems:
        return None
    return (
        f"model {figures.new_model} would replace {figures.old_model} but keeps "
        f"{figures.catalogue_overlap:.1%} of the {figures.old_items} items of the serving catalogue "
        f"({figures.new_items} items in the new one) and can read {figures.history_coverage:.1%} of the "
        f"{figures.sample_histories} sample histories of the serving model (the others become cold starts): "
        f"{'; '.join(problems)}. Refused: pass --force to replace it anyway"
    )


def check_replacement(
    old_folder: str | Path,
    new_folder: str | Path,
    min_catalogue_overlap: float = MIN_CATALOGUE_OVERLAP,
    min_history_coverage: float = MIN_HISTORY_COVERAGE,
) -> Replacement:
    """:func:`compare_artifacts`, then a :class:`RemiError` naming the figures when the change is drastic."""
    figures = compare_artifacts(old_folder, new_folder)
    refusal = replacement_refusal(figures, min_catalogue_overlap, min_history_coverage)
    if refusal:
        raise RemiError(refusal)
    return figures
