"""``additional_inputs``: extra forward arguments follow each row's sample, for every method.

The reference is a closure: a module that binds sample ``i``'s extras and takes only the image.
Explaining the batch with it and keeping row ``i`` must give row ``i`` of the explanation with
``additional_inputs`` (rows are independent: the registry-wide contract checks that a batch
equals its samples one by one), for every registered method and for the perturbation metrics,
whose forwards run on expanded batches of perturbed copies.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xai.attributions as attributions
from tests._models import TinyConvNet, TinyViT, seeded
from tests.conftest import hook_count
from xai.adapter import ModelAdapter, Shared, score_rows
from xai.metrics import ROAD, Deletion, Insertion, MuFidelity
from xai.metrics.robustness import MaxSensitivity

# cheap settings: the property is about where the extras go, not about cost
FAST = {
    "sobol_attribution": {"grid_size": 4, "n_designs": 2},
    "integrated_gradients": {"n_steps": 8},
    "smooth_grad": {"n_samples": 4},
    "occlusion": {"window_size": 8, "stride": 4},
    "salient_relevance": {"longest_side": 16},
}
SUPPORTED = [
    n for n in attributions.available("any") if attributions.get(n).accepts_additional_inputs
]


class ExtraNet(TinyConvNet):
    """``forward(x, scale, bias_map)``: per-sample scale ``(B,)`` and bias map ``(B, 1, H, W)``,
    plus an optional shared offset.
    """

    def forward(self, x, scale, bias_map, offset=0.0):
        x = x * scale.view(-1, 1, 1, 1) + bias_map + offset
        return super().forward(x)


class Bound(nn.Module):
    """The closure: ``net`` with one sample's extras bound, for any number of rows."""

    def __init__(self, net: ExtraNet, scale: torch.Tensor, bias_map: torch.Tensor) -> None:
        super().__init__()
        self.net, self.scale, self.bias_map = net, scale, bias_map

    def forward(self, x):
        n = x.shape[0]
        return self.net(x, self.scale.expand(n), self.bias_map.expand(n, -1, -1, -1))


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64)
    bias = torch.randn(2, 1, 16, 16, generator=gen, dtype=torch.float64)
    return seeded(ExtraNet()), x, (scale, bias)


def closure(net, extras, i):
    scale, bias = extras
    return Bound(net, scale[i : i + 1], bias[i : i + 1])


def reference(build, x, net, extras):
    """Row ``i`` of ``build(closure_i)(x)`` for each sample ``i``."""
    return torch.stack([build(closure(net, extras, i))[i] for i in range(x.shape[0])])


def make(name, model, layer):
    return attributions.get(name).create(model, layer=layer, **FAST.get(name, {}))


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_method_equals_the_closure_that_binds_the_extras(name, data):
    net, x, extras = data
    before = hook_count(net)
    maps = make(name, net, "features")(x, None, additional_inputs=extras)
    assert hook_count(net) == before
    expected = reference(lambda m: make(name, m, "net.features")(x, None), x, net, extras)
    torch.testing.assert_close(maps, expected, rtol=1e-6, atol=1e-9)


def test_the_extras_matter_and_follow_their_sample(data):
    # swapping the samples' extras changes the maps: the equality above is not vacuous
    net, x, (scale, bias) = data
    method = attributions.get("score_cam").create(net, layer="features")
    maps = method(x, 0, additional_inputs=(scale, bias))
    swapped = method(x, 0, additional_inputs=(scale.flip(0), bias.flip(0)))
    assert not torch.allclose(maps, swapped)


@pytest.mark.parametrize(
    "metric",
    [
        Deletion(n_steps=4),
        Insertion(n_steps=4),
        MuFidelity(n_samples=6),
        ROAD(fractions=[0.1, 0.5]),
    ],
    ids=lambda m: type(m).__name__,
)
def test_perturbation_metrics_equal_the_closure(metric, data):
    net, x, extras = data
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = metric(net, x, maps, None, additional_inputs=extras)
    want = [metric(closure(net, extras, i), x, maps, None) for i in range(2)]
    torch.testing.assert_close(got.scores, torch.stack([w.scores[i] for i, w in enumerate(want)]))
    if got.curve is not None:
        torch.testing.assert_close(got.curve, torch.stack([w.curve[i] for i, w in enumerate(want)]))


def test_explainer_metric_passes_the_extras_to_every_re_explanation(data):
    net, x, extras = data
    metric = MaxSensitivity(n_samples=3, radius=0.05, batch_size=4)
    saliency = attributions.Saliency
    got = metric(net, x, saliency(net), None, additional_inputs=extras)
    want = [metric(m, x, saliency(m), None) for m in (closure(net, extras, i) for i in range(2))]
    torch.testing.assert_close(got.scores, torch.stack([w.scores[i] for i, w in enumerate(want)]))


def test_shared_values_are_passed_unchanged(data):
    net, x, (scale, bias) = data
    method = attributions.Saliency(net)
    shifted = method(x, 1, additional_inputs=(scale, bias, Shared(torch.tensor(0.25))))
    plain = method(x, 1, additional_inputs=(scale, bias + 0.25))
    torch.testing.assert_close(shifted, plain)


def test_bad_additional_inputs_raise_clear_errors(data):
    net, x, (scale, bias) = data
    method = attributions.Saliency(net)
    with pytest.raises(ValueError, match=r"one row per sample .*Shared"):
        method(x, additional_inputs=(scale[:1], bias))
    nan = bias.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        method(x, additional_inputs=(scale, nan))
    for name, model in (("eva", net), ("attention_rollout", TinyViT())):
        with pytest.raises(ValueError, match="cannot pass additional_inputs"):
            attributions.get(name).create(model)(x, additional_inputs=(scale, bias))
    assert hook_count(net) == 0


def test_an_expanded_forward_without_rows_raises_and_rows_select_the_extras(data):
    net, x, (scale, bias) = data
    adapter = ModelAdapter(net)
    with adapter.bound((scale, bias), batch=2):
        with pytest.raises(RuntimeError, match="pass rows="):
            adapter.forward(x.repeat(2, 1, 1, 1))
        rows = torch.tensor([1, 0, 1])
        out = adapter.forward(x[rows], rows=rows)
        scores = score_rows(
            adapter, attributions.base.as_target(2), 3, lambda r: x[rows[r]], rows, batch_size=2
        )
    torch.testing.assert_close(out, net(x[rows], scale[rows], bias[rows]))
    torch.testing.assert_close(scores, out[:, 2])
    assert adapter.additional_inputs is None  # unbound on exit


def test_evaluate_passes_the_extras_to_methods_and_metrics(data):
    from xai.metrics import Sparseness, evaluate

    net, x, extras = data
    method = attributions.Saliency(net)
    metrics = [Deletion(n_steps=4), Sparseness()]
    table = evaluate(net, x, {"saliency": method}, metrics, 1, additional_inputs=extras)
    maps = method(x, 1, additional_inputs=extras)
    deletion = Deletion(n_steps=4)(net, x, maps, 1, additional_inputs=extras).scores
    rows = [s for m, s in zip(table["metric"], table["score"], strict=True) if m == "deletion"]
    torch.testing.assert_close(torch.tensor(rows, dtype=deletion.dtype), deletion)
