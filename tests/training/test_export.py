"""ONNX export: parity with PyTorch for every backbone, the artifact folder, atomicity, damage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from remi.artifacts import UserTower, load_artifacts, pad_histories
from remi.contract import (
    ITEM_EMBEDDINGS,
    ITEM_IDS,
    MANIFEST,
    MODEL_FILE,
    ArtifactError,
    read_artifact_manifest,
)
from remi.errors import RemiError
from training import export as export_module
from training.export import PARITY_TOLERANCE, export_onnx, export_run, parity_error, parity_inputs
from training.models import MODELS, EncoderSpec, build_model
from training.runs import load_run

L = 20


@pytest.mark.parametrize("name", [*MODELS, "comirec-sa shared", "comirec-sa encoder", "comirec-sa adaptive"])
def test_onnx_matches_pytorch_for_every_backbone(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone, _, variant = name.partition(" ")
    encoder = EncoderSpec(blocks=2, heads=2) if variant == "encoder" or backbone == "sasrec" else None
    model = build_model(
        backbone, n_items=300, dim=24, n_interests=4, seq_len=L, shared_interest=variant == "shared", encoder=encoder
    )
    model.adaptive = "log2" if variant == "adaptive" else "off"
    with torch.no_grad():  # move every weight off its initial value, as training would
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.item_emb.weight[0].zero_()
    path = tmp_path / "tower.onnx"
    export_onnx(model, path)
    batches = parity_inputs(300, L)
    sizes = {len(ids) for ids, _ in batches}
    lengths = {int(n) for _, mask in batches for n in mask.sum(1)}
    assert sizes == {1, 64} and {1, L // 2, L} <= lengths
    assert parity_error(model, path, batches) <= PARITY_TOLERANCE
    ids, mask = batches[-1]  # the interest mask output: the rule's, exactly
    _, _, active = UserTower(path).run_with_mask(ids, mask)
    expected = model.interest_mask(torch.from_numpy(mask)).numpy()
    assert active.dtype == bool and np.array_equal(active, expected)
    assert (variant == "adaptive") == (not active.all())

    import onnx

    graph = onnx.load(str(path))
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= 17
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch


def test_pad_histories_keeps_the_last_items_left_aligned() -> None:
    ids, mask = pad_histories([[1, 2, 3], list(range(1, 31)), []], seq_len=5)
    assert ids.tolist() == [[1, 2, 3, 0, 0], [26, 27, 28, 29, 30], [0, 0, 0, 0, 0]]
    assert mask.sum(1).tolist() == [3, 5, 0]


def test_export_then_reload_gives_identical_item_vectors_and_ids(trained_run: Path, artifacts_dir: Path) -> None:
    _, model = load_run(trained_run)
    arts = load_artifacts(artifacts_dir)
    np.testing.assert_array_equal(arts.item_vectors, model.item_vectors().detach().numpy())
    assert arts.item_ids == (trained_run / "item_ids.txt").read_text().split("\n")[: model.n_items]
    m = arts.manifest
    assert (m.backbone, m.dim, m.interests, m.seq_len, m.n_items) == ("comirec-sa", 16, 4, 20, model.n_items)
    assert m.parity_max_abs <= PARITY_TOLERANCE and m.opset >= 17
    assert len(m.model_version) == 16 and m.data_fingerprint["sha256"] and m.metrics["test"]["recall@50"] > 0
    assert arts.popularity.sum() == m.data_fingerprint["interactions"] and arts.popularity.min() >= 1
    # The artifact tower answers like the checkpoint on real held-out histories.
    v, r = arts.tower.run(arts.sample_history[:64], arts.sample_mask[:64])
    with torch.no_grad():
        ref_v, ref_r = model.eval()(torch.from_numpy(arts.sample_history[:64]), torch.from_numpy(arts.sample_mask[:64]))
    assert np.abs(v - ref_v.numpy()).max() <= PARITY_TOLERANCE
    assert np.abs(r - ref_r.numpy()).max() <= PARITY_TOLERANCE


def test_model_version_is_a_content_hash(trained_run: Path, artifacts_dir: Path, tmp_path: Path) -> None:
    again = export_run(trained_run, tmp_path / "again")
    assert again.model_version == read_artifact_manifest(artifacts_dir).model_version


def test_failed_parity_leaves_no_folder_behind(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "parity_error", lambda *a, **k: 1.0)
    with pytest.raises(RemiError, match="parity"):
        export_run(trained_run, tmp_path / "art")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a hidden partial one


def test_crash_mid_export_keeps_the_previous_folder(
    trained_run: Path, artifacts_dir: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "art"
    shutil.copytree(artifacts_dir, out)
    before = (out / MANIFEST).read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module.np, "savez", crash)
    with pytest.raises(OSError):
        export_run(trained_run, out, force=True)
    assert (out / MANIFEST).read_text() == before
    read_artifact_manifest(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_existing_folder_needs_force(trained_run: Path, artifacts_dir: Path) -> None:
    with pytest.raises(RemiError, match="already exists"):
        export_run(trained_run, artifacts_dir)


def test_duplicate_item_ids_in_the_run_are_refused_at_export(trained_run: Path, tmp_path: Path) -> None:
    from remi.contract import RUN_ITEM_IDS as ITEMS_FILE

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ids = (run / ITEMS_FILE).read_text().split("\n")
    ids[11] = ids[5]
    (run / ITEMS_FILE).write_text("\n".join(ids))
    with pytest.raises(ArtifactError, match=r"duplicate item id '[^']+' on lines 6 and 12") as caught:
        export_run(run, tmp_path / "art")
    assert len(str(caught.value).splitlines()) == 1
    assert not (tmp_path / "art").exists()


def test_folder_without_manifest_is_reported_incomplete(artifacts_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "art"
    shutil.copytree(artifacts_dir, broken)
    (broken / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        load_artifacts(broken)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("name", [MODEL_FILE, ITEM_EMBEDDINGS, ITEM_IDS])
def test_corrupt_or_truncated_artifact_is_a_clear_error(artifacts_dir: Path, tmp_path: Path, damage: str, name: str):
    broken = tmp_path / "art"
    shutil.copytree(artifacts_dir, broken)
    data = bytearray((broken / name).read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    (broken / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="truncated|corrupt") as err:
        load_artifacts(broken)
    assert name in str(err.value)


def test_garbage_onnx_file_is_a_clear_error_even_without_the_checksum(artifacts_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "art"
    shutil.copytree(artifacts_dir, broken)
    size = (broken / MODEL_FILE).stat().st_size
    (broken / MODEL_FILE).write_bytes(b"\x00garbage" * (size // 8) + b"\x00" * (size % 8))
    with pytest.raises(ArtifactError, match="cannot load the ONNX model"):
        load_artifacts(broken, check_hash=False)


def test_manifest_of_another_format_version_is_refused(artifacts_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "art"
    shutil.copytree(artifacts_dir, broken)
    manifest = json.loads((broken / MANIFEST).read_text())
    manifest["format_version"] = 99
    (broken / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version 99"):
        load_artifacts(broken)


def test_weights_outside_the_model_file_export_load_and_are_checked(trained_run: Path, tmp_path: Path) -> None:
    """The layout large catalogues need (a single-file ONNX model stops at 2 GB)."""
    from remi.contract import MODEL_DATA

    manifest = export_run(trained_run, tmp_path / "art", external_data=True)
    assert MODEL_DATA in manifest.files and manifest.parity_max_abs <= PARITY_TOLERANCE
    arts = load_artifacts(tmp_path / "art")
    v, _ = arts.tower.run(arts.sample_history[:8], arts.sample_mask[:8])
    assert v.shape[0] == 8
    from index.publish import reindex
    from retrieval.store import load_current

    reindex(tmp_path / "art", tmp_path / "root", kind="flat")  # the version copies the weights file too
    served = load_current(tmp_path / "root").artifacts
    assert np.array_equal(served.tower.run(arts.sample_history[:8], arts.sample_mask[:8])[0], v)
    data = bytearray((tmp_path / "art" / MODEL_DATA).read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "art" / MODEL_DATA).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=MODEL_DATA):
        load_artifacts(tmp_path / "art")
