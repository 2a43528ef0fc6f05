from pathlib import Path

import pandas as pd
import pytest

from studies.tune_lodo import parser, run

BASE = {"params_beta": 0.05, "params_lam": 20000.0, "params_lr": 1e-3, "params_emb_l2": 0.1}
OTHER = {"params_beta": 0.3, "params_lam": 5000.0, "params_lr": 2e-3, "params_emb_l2": 0.01}
OWN = {"params_beta": 1.0, "params_lam": 900.0, "params_lr": 3e-4, "params_emb_l2": 0.3}


def study(folder: Path, base: float, other: float, own: float | None = None) -> str:
    rows = [{"number": 0, "value": base, **BASE}, {"number": 1, "value": other, **OTHER}]
    if own is not None:  # a point only this dataset tried (TPE's)
        rows.append({"number": 2, "value": own, **OWN})
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    return str(folder)


def test_the_held_out_dataset_gets_the_others_pick_measured_against_its_own_best(tmp_path: Path) -> None:
    specs = [
        f"a={study(tmp_path / 'a', base=0.10, other=0.12, own=0.15)}",
        f"b={study(tmp_path / 'b', base=0.20, other=0.30)}",
        f"c={study(tmp_path / 'c', base=0.40, other=0.44)}",
    ]
    result = run(parser().parse_args(specs))
    rows = {r["held_out"]: r for r in result["rows"]}
    assert result["common_points"] == 2
    # b and c both prefer OTHER, so a gets OTHER; a's own best is its TPE point
    assert rows["a"]["pick"] == OTHER and rows["a"]["pick_vs_own"] == pytest.approx(0.12 / 0.15 - 1)
    assert rows["a"]["default_vs_own"] == pytest.approx(0.10 / 0.15 - 1)
    assert rows["b"]["pick_vs_own"] == 0.0 and rows["b"]["default_vs_own"] == pytest.approx(0.20 / 0.30 - 1)


def test_studies_that_share_no_setting_are_refused(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    pd.DataFrame([{"number": 0, "value": 0.1, **OWN}]).to_csv(a / "trials.csv", index=False)
    specs = [f"a={a}", f"b={study(tmp_path / 'b', base=0.2, other=0.3)}"]
    with pytest.raises(SystemExit, match="share no setting"):
        run(parser().parse_args(specs))
