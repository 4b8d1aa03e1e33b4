"""The audit's settings object and its data paths: one config, one set of numbers.

Ground truth: ``audit(**keywords)`` is defined as ``run_audit`` of the ``AuditConfig`` built
from the same keywords, and a Dataset of tensor rows (sliced) must give exactly the numbers of
the same samples read item by item by a DataLoader.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from xai.attributions.gradients import Saliency
from xai.audit import AuditConfig, audit, run_audit


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(12, 3),
    ).double().eval()  # fmt: skip


def _data(n: int = 24):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 10, 10, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    m = torch.rand(n, 10, 10, generator=gen) > 0.5
    g = torch.randint(0, 2, (n,), generator=gen)
    return x, y, m, g


class _Items(Dataset):
    """The same samples behind a plain ``__getitem__`` (collated by a DataLoader)."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, i: int):
        return tuple(t[i] for t in self.tensors)


def _same(a, b) -> None:
    assert a.to_dict() == b.to_dict()
    torch.testing.assert_close(a.mean_maps, b.mean_maps, rtol=0, atol=0)


def test_config_validates_and_is_frozen():
    config = AuditConfig(grid_size=3, concepts=2, layer="0")
    assert config.keep_for_concepts == 32 and config.factorized_layer == "0"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.grid_size = 4  # type: ignore[misc]
    for bad, match in (
        ({"target": "logit"}, "target must be"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"mass_threshold": 1.5}, "mass_threshold must be in"),
        ({"concepts": 2}, "concepts need a layer"),
        ({"engine": "spark"}, "engine must be"),
        ({"engine": "ray", "checkpoint": "c.pt"}, "checkpoint= is for the local engine"),
    ):
        with pytest.raises(ValueError, match=match):
            AuditConfig(**bad)
    with pytest.raises(TypeError, match="explainer must be"):
        AuditConfig(explainer=3)


def test_run_audit_with_a_config_equals_the_keyword_front():
    model, (x, y, m, g) = _net(), _data()
    settings: dict[str, Any] = {"batch_size": 7, "grid_size": 3, "n_worst": 2, "min_samples": 2}
    by_keywords = audit(
        model, x, labels=y, masks=m, groups=g, explainer=Saliency(model), progress=False,
        **settings,
    )  # fmt: skip
    config = AuditConfig(explainer=Saliency(model), progress=False, **settings)
    _same(run_audit(model, x, config, labels=y, masks=m, groups=g), by_keywords)


def test_a_dataset_of_tensor_rows_gives_the_numbers_of_an_item_by_item_dataset():
    model, (x, y, m, g) = _net(), _data()
    kwargs: dict[str, Any] = {
        "explainer": Saliency(model),
        "batch_size": 5,
        "grid_size": 3,
        "progress": False,
    }
    sliced = audit(model, TensorDataset(x, y, m, g), **kwargs)
    collated = audit(model, _Items(x, y, m, g), num_workers=0, **kwargs)
    _same(sliced, collated)
    _same(sliced, audit(model, x, labels=y, masks=m, groups=g, **kwargs))
    with pytest.raises(ValueError, match="go with a tensor of images"):
        audit(model, TensorDataset(x, y), labels=y, **kwargs)
