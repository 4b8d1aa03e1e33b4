"""evaluate(): the tidy table of methods x metrics x samples, and the metric metadata."""

from __future__ import annotations

import pytest
import torch

import xai.metrics as M
from tests._models import TinyConvNet, seeded
from xai.attributions import GradCAM, Saliency


@pytest.fixture
def setup():
    net = seeded(TinyConvNet())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masks = torch.zeros(2, 16, 16)
    masks[:, 4:10, 4:10] = 1
    return net, x, masks


def test_table_matches_direct_calls(setup):
    net, x, masks = setup
    methods = {"saliency": Saliency(net), "cam": GradCAM(net, "features")}
    metrics = [
        M.Deletion(n_steps=4),
        M.PointingGame(0),
        M.Sparseness(),
        M.MaxSensitivity(n_samples=2),
    ]
    table = M.evaluate(net, x, methods, metrics, masks=masks)
    assert len(table["score"]) == 2 * 4 * 2
    assert all(len(col) == 16 for col in table.values())
    for name, method in methods.items():
        maps = method(x)
        for metric in metrics:
            if isinstance(metric, M.ExplainerMetric):
                direct = metric(net, x, method)
            elif isinstance(metric, M.PointingGame):
                direct = metric(net, x, maps, masks=masks)
            else:
                direct = metric(net, x, maps)
            rows = [
                i
                for i in range(16)
                if table["method"][i] == name and table["metric"][i] == metric.name
            ]
            assert [table["sample"][i] for i in rows] == [0, 1]
            assert [table["score"][i] for i in rows] == pytest.approx(direct.scores.tolist())
            if direct.curve is not None:
                assert table["curve"][rows[0]] == pytest.approx(direct.curve[0].tolist())
                assert table["steps"][rows[0]] == pytest.approx(direct.steps.tolist())
            assert table["higher_is_better"][rows[0]] is metric.higher_is_better


def test_precomputed_maps_skip_explainer_metrics_with_a_warning(setup):
    net, x, _ = setup
    maps = Saliency(net)(x)
    with pytest.warns(UserWarning, match="precomputed maps, skipped"):
        table = M.evaluate(net, x, {"s": maps}, [M.Insertion(n_steps=3), M.AvgSensitivity()])
    assert set(table["metric"]) == {"insertion"}
    direct = M.Insertion(n_steps=3)(net, x, maps)
    assert table["score"] == pytest.approx(direct.scores.tolist())


def test_localization_without_masks_is_an_error(setup):
    net, x, _ = setup
    with pytest.raises(ValueError, match="needs masks"):
        M.evaluate(net, x, {"s": Saliency(net)}, [M.RelevanceMassAccuracy()])


def test_every_metric_declares_its_metadata():
    categories = {"faithfulness", "localization", "randomization", "robustness", "complexity"}
    names = set()
    for attr in M.__all__:
        cls = getattr(M, attr)
        if isinstance(cls, type) and issubclass(cls, M.Metric) and "name" in vars(cls):
            assert cls.category in categories
            assert isinstance(cls.higher_is_better, bool)
            assert cls.name not in names
            names.add(cls.name)
    assert {"deletion", "insertion", "mu_fidelity", "pointing_game", "class_sensitivity"} <= names


def test_result_mean_and_frozen():
    res = M.MetricResult(torch.tensor([1.0, float("nan"), 3.0]))
    assert res.mean() == 2.0 and len(res) == 3
    with pytest.raises(AttributeError):
        res.scores = torch.zeros(3)  # type: ignore[misc]


def test_a_metric_that_declares_needs_masks_gets_them(setup):
    """evaluate() asks the metric's declared need, not its class: a new mask metric works."""
    net, x, masks = setup

    class MassInside(M.ExplanationMetric):
        name = "mass_inside"
        higher_is_better = True
        category = "localization"
        needs_masks = True
        needs_model = False

        def _evaluate(self, model, inputs, maps, target, **kwargs):
            inside = (maps.abs() * kwargs["masks"].to(maps)).flatten(1).sum(1)
            return M.MetricResult(inside / maps.abs().flatten(1).sum(1))

    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    table = M.evaluate(net, x, {"m": maps}, [MassInside()], masks=masks)
    expected = (maps * masks).flatten(1).sum(1) / maps.flatten(1).sum(1)
    assert table["score"] == pytest.approx(expected.tolist())
    assert not M.Metric.needs_masks and M.PointingGame.needs_masks  # default; localization
    with pytest.raises(ValueError, match="MassInside needs masks"):
        M.evaluate(net, x, {"m": maps}, [MassInside()])
