"""Localization and complexity metrics: planted ground truth, closed forms and Quantus 0.6."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.metrics._nets import gray
from xai.metrics import (
    Complexity,
    EnergyPointingGame,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    Sparseness,
)

F64 = torch.float64


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 16, 16, generator=gen)
    a = torch.rand(4, 16, 16, generator=gen)  # non-negative, continuous
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 8:, 8:] = True
    masks[2, 5:12, 1:4] = True
    masks[3, 0:3, 0:16] = True
    return x, a, masks


def _quantus(name, x, a, masks, **kw):
    quantus = pytest.importorskip("quantus")
    metric = getattr(quantus, name)(
        disable_warnings=True, display_progressbar=False, normalise=False, **kw
    )
    model = gray()
    y = model(x).argmax(1).numpy()
    return np.asarray(
        metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y,
            a_batch=a[:, None].numpy(),
            s_batch=masks[:, None].numpy().astype(float),
            device="cpu",
        )
    )


def test_pointing_game_matches_quantus_without_tolerance(data):
    x, a, masks = data
    a = a.clone()
    a[0, 4, 4] = 2.0  # planted hit
    a[1, 0, 0] = 2.0  # planted miss
    ref = _quantus("PointingGame", x, a, masks, abs=False)
    ours = PointingGame(tolerance=0)(None, x, a, masks=masks)
    np.testing.assert_array_equal(ours.scores.numpy(), ref)
    assert ours.scores[0] == 1 and ours.scores[1] == 0


def test_pointing_game_tolerance_is_euclidean():
    x = torch.zeros(1, 1, 20, 20)
    mask = torch.zeros(1, 20, 20)
    mask[0, 10, 10] = 1
    for (r, c), tol, hit in [
        ((10, 13), 3, 1),
        ((10, 14), 3, 0),
        ((12, 12), 2.9, 1),
        ((12, 12), 2.8, 0),
        ((13, 12), 3, 0),
    ]:
        a = torch.zeros(1, 20, 20)
        a[0, r, c] = 1
        assert PointingGame(tolerance=tol)(None, x, a, masks=mask).scores.item() == hit


def test_pointing_game_boxes_and_ties():
    x = torch.zeros(2, 3, 8, 8)
    a = torch.zeros(2, 8, 8)
    a[0, 1, 1] = a[0, 6, 6] = 1.0  # tie, one inside the box: a hit (as Quantus)
    a[1, 6, 6] = 1.0
    boxes = torch.tensor([[5, 5, 8, 8], [0, 0, 3, 3]])  # x0, y0, x1, y1
    res = PointingGame(tolerance=0)(None, x, a, masks=boxes)
    torch.testing.assert_close(res.scores, torch.tensor([1.0, 0.0]))


def test_relevance_mass_accuracy_matches_quantus(data):
    x, a, masks = data
    ref = _quantus("RelevanceMassAccuracy", x, a, masks, abs=False)
    ours = RelevanceMassAccuracy()(None, x, a, masks=masks)
    np.testing.assert_allclose(ours.scores.numpy(), ref, rtol=1e-5)
    signed = a - 0.5
    raw = RelevanceMassAccuracy("raw")(None, x, signed, masks=masks).scores
    ref_raw = _quantus("RelevanceMassAccuracy", x, signed, masks, abs=False)
    np.testing.assert_allclose(raw.numpy(), ref_raw, rtol=1e-4)


def test_relevance_mass_accuracy_planted():
    x = torch.zeros(2, 1, 6, 6)
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[:, :3] = True
    a = torch.zeros(2, 6, 6)
    a[0, :3] = 1.0  # all positive relevance inside
    a[0, 3:] = -5.0  # negative relevance outside is ignored by the positive part
    a[1, :3] = 1.0
    a[1, 3:] = 3.0
    scores = RelevanceMassAccuracy()(None, x, a, masks=mask).scores
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.25]))
    torch.testing.assert_close(EnergyPointingGame()(None, x, a, masks=mask).scores, scores)


def test_relevance_rank_accuracy_matches_quantus(data):
    x, a, masks = data
    ref = _quantus("RelevanceRankAccuracy", x, a, masks, abs=False)
    ours = RelevanceRankAccuracy()(None, x, a, masks=masks)
    np.testing.assert_allclose(ours.scores.numpy(), ref, rtol=1e-6)
    perfect = masks.float() + 0.1 * a  # top-|mask| pixels are exactly the mask
    torch.testing.assert_close(
        RelevanceRankAccuracy()(None, x, perfect, masks=masks).scores, torch.ones(4)
    )


def test_empty_mask_scores_nan_and_mean_ignores_it(data):
    x, a, masks = data
    masks = masks.clone()
    masks[2] = False
    for metric in (PointingGame(0), RelevanceMassAccuracy(), RelevanceRankAccuracy()):
        res = metric(None, x, a, masks=masks)
        assert math.isnan(res.scores[2].item())
        assert res.mean() == pytest.approx(float(res.scores[[0, 1, 3]].mean()))


def test_mask_errors(data):
    x, a, masks = data
    with pytest.raises(ValueError, match="needs ground truth"):
        PointingGame()(None, x, a)
    with pytest.raises(ValueError, match=r"pass \(4, 16, 16\) masks or \(4, 4\) boxes"):
        PointingGame()(None, x, a, masks=masks[:, :8])
    with pytest.raises(ValueError, match="tolerance"):
        PointingGame(tolerance=-1)


# --- complexity ------------------------------------------------------------------------------


def test_sparseness_and_complexity_closed_forms():
    x = torch.zeros(2, 1, 10, 10)
    maps = torch.ones(2, 10, 10)
    maps[1] = 0
    maps[1, 3, 4] = -2.0  # one-hot (sign ignored)
    sp = Sparseness()(None, x, maps).scores
    torch.testing.assert_close(sp, torch.tensor([0.0, 0.99]))
    cx = Complexity()(None, x, maps).scores
    torch.testing.assert_close(cx, torch.tensor([math.log(100), 0.0]))
    assert Sparseness()(None, x, torch.zeros(1, 10, 10).expand(2, -1, -1)).scores.eq(0).all()


def test_sparseness_and_complexity_match_quantus(data):
    x, a, masks = data
    signed = a - 0.3
    for ours_cls, name in ((Sparseness, "Sparseness"), (Complexity, "Complexity")):
        quantus = pytest.importorskip("quantus")
        ref = getattr(quantus, name)(
            disable_warnings=True, display_progressbar=False, normalise=False, abs=True
        )(
            model=gray(),
            x_batch=x.numpy(),
            y_batch=np.zeros(4, dtype=int),
            a_batch=signed[:, None].numpy(),
            device="cpu",
        )
        ours = ours_cls()(None, x, signed).scores
        # Quantus adds 1e-7 (sparseness) / 1e-12 (complexity) inside: rtol 1e-5
        np.testing.assert_allclose(ours.numpy(), np.asarray(ref), rtol=1e-5)
