"""Complexity: how concentrated is the explanation? Model-free: ``metric(None, inputs, maps)``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from xai.adapter import Target
from xai.metrics.base import ExplanationMetric, MetricResult

__all__ = ["Complexity", "Sparseness"]


class Sparseness(ExplanationMetric):
    r"""Sparseness (Chalasani et al. 2020): the Gini index of the absolute map.

    .. math:: G = \frac{\sum_{i=1}^{n} (2i - n - 1)\, a_{(i)}}{n \sum_i a_{(i)}}

    with ``a`` the absolute values sorted ascending. 0 for a constant map, ``(n-1)/n`` for a
    one-hot map; an all-zero map scores 0. Higher is better (sparser).

    References:
        Chalasani et al., "Concise Explanations of Neural Networks using Adversarial Training",
        ICML 2020.
    """

    name: ClassVar[str] = "sparseness"
    constant_maps: ClassVar[Literal["nan", "score"]] = "score"
    higher_is_better: ClassVar[bool] = True
    category: ClassVar = "complexity"
    needs_model: ClassVar[bool] = False
    input_ranks: ClassVar[tuple[int, ...]] = (4, 5)

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        a = torch.sort(maps.abs().flatten(1).double(), dim=1).values
        n = a.shape[1]
        i = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
        total = a.sum(1)
        gini = ((2 * i - n - 1) * a).sum(1) / (n * total.clamp_min(torch.finfo(a.dtype).tiny))
        return MetricResult(torch.where(total > 0, gini, torch.zeros_like(gini)).to(maps.dtype))


class Complexity(ExplanationMetric):
    r"""Complexity (Bhatt et al. 2020): entropy of the normalized absolute map.

    .. math:: H = -\sum_i p_i \log p_i, \quad p_i = |\phi_i| / \sum_j |\phi_j|

    (natural log; ``0 log 0 = 0``). ``log n`` for a uniform map, 0 for a one-hot map; an all-zero
    map scores NaN. Lower is better (simpler).

    References:
        Bhatt, Weller, Moura, "Evaluating and Aggregating Feature-based Model Explanations",
        IJCAI 2020.
    """

    name: ClassVar[str] = "complexity"
    constant_maps: ClassVar[Literal["nan", "score"]] = "score"
    higher_is_better: ClassVar[bool] = False
    category: ClassVar = "complexity"
    needs_model: ClassVar[bool] = False
    input_ranks: ClassVar[tuple[int, ...]] = (4, 5)

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        a = maps.abs().flatten(1).double()
        total = a.sum(1, keepdim=True)
        p = a / total
        entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(1)
        nan = torch.full_like(entropy, float("nan"))
        return MetricResult(torch.where(total[:, 0] > 0, entropy, nan).to(maps.dtype))
