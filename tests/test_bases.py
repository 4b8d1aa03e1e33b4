"""The base classes users subclass: abstract where a method is required, and what they provide."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import xai.metrics as M
from tests._models import TinyConvNet, seeded
from xai.adapter import Target
from xai.attributions import LayerAttribution, LayerView, MetaSaliency, NormGrad, SalientRelevance
from xai.attributions.lrp import LRP, Rule
from xai.attributions.sobol import Perturbation
from xai.attributions.wrappers import WrappedAttribution


@pytest.mark.parametrize("base", [Target, Rule, Perturbation])
def test_a_subclass_without_call_fails_at_construction(base):
    incomplete = type("Incomplete", (base,), {})
    with pytest.raises(TypeError, match="abstract"):
        incomplete()
    complete = type("Complete", (base,), {"__call__": lambda self, *args: args[0]})
    assert complete()(1.0) == 1.0


def test_a_layer_method_without_layer_map_fails_at_construction():
    incomplete = type("Incomplete", (LayerAttribution,), {})
    with pytest.raises(TypeError, match="abstract"):
        incomplete(TinyConvNet(), "features")


class _Recorder(LayerAttribution):
    """Keeps the views it is given; its map is the channel sum of the layer input."""

    needs_gradients = False

    @property
    def needs_layer_input(self) -> bool:
        return True

    def _layer_map(self, view: LayerView) -> torch.Tensor:
        self.views = [*getattr(self, "views", []), view]
        assert view.layer_input is not None
        return view.layer_input.sum(1)


def test_the_layer_view_holds_the_layer_input_when_a_method_asks_for_it():
    model = seeded(TinyConvNet())
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    method = _Recorder(model, "features.2", upsample=False)
    maps = method(x, target=None)
    (view,) = method.views
    expected_input = model.features[1](model.features[0](x))  # what features.2 receives
    torch.testing.assert_close(view.layer_input, expected_input)
    torch.testing.assert_close(maps, expected_input.sum(1))
    assert view.name == "features.2" and view.gradients is None
    assert view.activations.shape == (2, 8, 8, 8)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    torch.testing.assert_close(view.target(view.outputs), view.outputs[[0, 1], predicted])
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.name = "other"  # type: ignore[misc]
    with pytest.raises(RuntimeError, match="needs_gradients"):
        view.require_gradients()
    # NormGrad's default (conv1x1) does not keep layer inputs, "proper" does
    assert not NormGrad(model, "features.2").needs_layer_input
    assert NormGrad(model, "features.2", virtual_layer="proper").needs_layer_input


def test_wrappers_share_one_base_and_rebind_their_inner_method():
    model, other = seeded(TinyConvNet()), seeded(TinyConvNet(), seed=1)
    for wrapper in (
        MetaSaliency(NormGrad(model, "features")),
        SalientRelevance(LRP(model, canonizers=None)),
    ):
        assert isinstance(wrapper, WrappedAttribution)
        clone = wrapper.rebind(other)
        assert clone.model is other and clone.inner.model is other
        assert wrapper.model is model and wrapper.inner.model is model
        assert repr(wrapper).startswith(f"{type(wrapper).__name__}({type(wrapper.inner).__name__}")
    with pytest.raises(TypeError, match="SalientRelevance wraps an LRP instance"):
        SalientRelevance(NormGrad(model, "features"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "options", "morf", "expected"),
    [
        (M.PixelFlipping, {"order": "lerf"}, False, True),
        (M.ROAD, {"order": "lerf"}, False, True),
        (M.RegionPerturbation, {"order": "lerf"}, True, False),
        (M.RegionPerturbation, {"order": "difference"}, True, True),
        (M.PixelFlipping, {}, False, False),
    ],
)
def test_higher_is_better_follows_the_ranking_order(cls, options, morf, expected):
    assert cls.higher_is_better is morf
    assert cls(**options).higher_is_better is expected
