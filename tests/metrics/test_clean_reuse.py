"""The curve metrics take the clean inputs' scores from the forward that froze an argmax target
instead of running those inputs again (step 0 of deletion, the last step of insertion); the
curves still equal a per-step loop written from the definition."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from xai.adapter import ProbabilityTarget
from xai.metrics import Deletion, Insertion, RegionPerturbation

F64 = torch.float64


class Counting(nn.Module):
    """A linear classifier that counts the rows it scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).double()
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return self.net(x)


def _loop(model: nn.Module, x: Tensor, maps: Tensor, n_steps: int, insert: bool) -> Tensor:
    """Deletion/insertion curves by the definition: one image per step, argmax class prob."""
    batch, _, height, width = x.shape
    n = height * width
    counts = torch.linspace(0, n, n_steps + 1, dtype=F64).round().long()
    curves = torch.empty(batch, n_steps + 1, dtype=F64)
    with torch.no_grad():
        classes = model(x).argmax(1)
        for b in range(batch):
            order = torch.sort(maps[b].flatten(), descending=True, stable=True).indices
            for s, k in enumerate(counts.tolist()):
                mask = torch.zeros(n, dtype=torch.bool)
                mask[order[:k]] = True
                mask = mask.view(1, height, width)
                image = torch.where(mask, x[b], 0.0) if insert else torch.where(mask, 0.0, x[b])
                curves[b, s] = model(image[None]).softmax(1)[0, classes[b]]
    return curves


@pytest.mark.parametrize("metric", [Deletion, Insertion], ids=lambda m: m.__name__)
@pytest.mark.parametrize("batch_size", ["auto", 1, None])
def test_the_clean_step_is_not_run_again(metric, batch_size):
    model = Counting().eval()
    x = torch.randn(3, 3, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    maps = torch.randn(3, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    result = metric(n_steps=4, batch_size=batch_size)(model, x, maps, ProbabilityTarget(None))
    assert model.rows == 3 + 3 * 4  # the clean forward, then 4 of the 5 steps per sample
    reference = _loop(model, x, maps, 4, insert=metric is Insertion)
    torch.testing.assert_close(result.curve, reference)


def test_an_explicit_class_runs_every_step():
    model = Counting().eval()
    x = torch.randn(2, 3, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    maps = torch.randn(2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    Deletion(n_steps=4)(model, x, maps, 1)  # no argmax: no clean forward to reuse
    assert model.rows == 2 * 5


def test_region_perturbation_difference_reuses_it_for_both_orders():
    model = Counting().eval()
    x = torch.randn(2, 3, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    maps = torch.randn(2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    target = ProbabilityTarget(None)
    metric = RegionPerturbation(3, n_regions=4, order="difference")
    result = metric(model, x, maps, target)
    assert model.rows == 2 + 2 * 2 * 4  # clean forward; MoRF and LeRF without their step 0
    assert torch.all(result.curve[:, 0] == 0)  # both drops start at 0
    metric.batch_size = 1
    torch.testing.assert_close(metric(model, x, maps, target).scores, result.scores)
