"""Concept map helpers: CRAFT's percentile filter and the top concepts of a prediction."""

from __future__ import annotations

import pytest
import torch

from tests.concepts._planted import FixedBank, PlantedNet, planted_bank, planted_images
from xai.concepts import ConceptExtractor, filter_maps, top_concepts


def test_filter_keeps_values_above_the_percentile_of_each_map():
    maps = torch.arange(2 * 3 * 10 * 10, dtype=torch.float64).reshape(2, 3, 10, 10)
    out = filter_maps(maps, percentile=90)
    kept = out != 0
    assert kept.flatten(2).sum(-1).eq(10).all()  # values >= the 90th percentile: top 10 of 100
    torch.testing.assert_close(out[kept], maps[kept])
    with pytest.raises(ValueError, match="percentile"):
        filter_maps(maps, percentile=120)


def test_top_concepts_are_the_largest_exact_contributions():
    bank = planted_bank()
    model = PlantedNet()
    x = planted_images(bank, n=3)
    ce = ConceptExtractor(
        model, "features", n_concepts=4, factorizer=FixedBank(bank), patches="positions"
    ).fit(x, target=2)
    idx, values = top_concepts(ce, x, n=2)
    contributions = ce.encode(x).mean((1, 2)) * (bank @ model.fc.weight[2].detach())
    expected = contributions.topk(2, dim=1)
    assert torch.equal(idx, expected.indices)
    torch.testing.assert_close(values, expected.values)
