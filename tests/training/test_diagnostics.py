import numpy as np
import pytest

from training.diagnostics import routing_diagnostics


def test_routing_diagnostics_tell_collapse_from_spread() -> None:
    mask = np.ones((1, 4), dtype=bool)
    collapsed = np.zeros((1, 2, 4))
    collapsed[0, :, 0] = 1
    spread = np.full((1, 2, 4), 0.25)
    v = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    c = routing_diagnostics(collapsed, mask, v)
    s = routing_diagnostics(spread, mask, v)
    assert c["effective_items"] == pytest.approx(1.0) and c["collapsed_share"] == 1.0
    assert s["effective_items"] == pytest.approx(4.0) and s["collapsed_share"] == 0.0
    assert s["effective_share"] == pytest.approx(1.0)
    assert c["interest_similarity"] == pytest.approx(0.0)
    same = routing_diagnostics(spread, mask, np.array([[[1.0, 1.0], [2.0, 2.0]]]))
    assert same["interest_similarity"] == pytest.approx(1.0)
