"""Videos and volumes ``(B, C, T, H, W)``: maps ``(B, T, H, W)`` against closed forms.

Grad-CAM on a Conv3d + global-average-pooling network and on torchvision's video ResNets
(r3d_18, r2plus1d_18, random weights) equals ``ReLU(sum_k mean(dy/dA_k) A_k)`` upsampled
trilinearly; the gradient methods equal ``torch.autograd``; occlusion, Sobol and the metrics are
checked on planted voxel models whose answer is known.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import hook_count
from xai.attributions.cam import GradCAM
from xai.attributions.gradients import Occlusion, Saliency
from xai.attributions.sobol import SobolAttribution
from xai.metrics import ROAD, Deletion, ModelParameterRandomization, MuFidelity, PointingGame
from xai.metrics._perturb import resolve_baseline


class Conv3dGap(nn.Module):
    """Conv3d (stride 2) -> ReLU -> global average pooling -> linear: Grad-CAM has a closed form."""

    def __init__(self, n_classes: int = 4, channels: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, channels, 3, padding=1, stride=2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3, 4)))


class VoxelLinear(nn.Module):
    """``f(x) = sum(W * x)``: the score drop of removing voxels is the sum of their ``W * x``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        return (x * self.weight).flatten(1).sum(1, keepdim=True)


def _clip(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _grad_cam_closed_form(acts: torch.Tensor, fc: nn.Linear, target: int, size) -> torch.Tensor:
    """Below global average pooling and a linear head, dy/dA_k = W[target, k] / (t h w)."""
    alpha = fc.weight[target] / acts[0, 0].numel()
    cam = F.relu((alpha.view(1, -1, 1, 1, 1) * acts).sum(1))
    return F.interpolate(cam[:, None], size=size, mode="trilinear", align_corners=False)[:, 0]


def test_grad_cam_on_conv3d_gap_equals_closed_form():
    torch.manual_seed(0)
    model = Conv3dGap().double().eval()
    x = _clip(2, 3, 6, 10, 12)
    maps = GradCAM(model, "act")(x, target=1)
    assert maps.shape == (2, 6, 10, 12) and maps.dtype == torch.float64
    with torch.no_grad():
        acts = model.act(model.conv(x))  # (2, 5, 3, 5, 6): trilinear upsampling matters
        expected = _grad_cam_closed_form(acts, model.fc, 1, (6, 10, 12))
    torch.testing.assert_close(maps, expected, rtol=1e-10, atol=1e-12)
    assert maps.amax() > 0
    low = GradCAM(model, "act", upsample=False)(x, target=1)
    assert low.shape == (2, 3, 5, 6)


@pytest.mark.parametrize("arch", ["r3d_18", "r2plus1d_18"])
def test_grad_cam_on_torchvision_video_resnets_equals_closed_form(arch):
    from torchvision.models import video

    torch.manual_seed(0)
    model = getattr(video, arch)(weights=None, num_classes=7).double().eval()
    x = _clip(1, 3, 4, 32, 32)
    maps = GradCAM(model, layer="layer4")(x, target=3)
    assert maps.shape == (1, 4, 32, 32) and torch.isfinite(maps).all()
    assert hook_count(model) == 0
    with torch.no_grad():
        acts = model.layer4(model.layer3(model.layer2(model.layer1(model.stem(x)))))
        expected = _grad_cam_closed_form(acts, model.fc, 3, (4, 32, 32))
    torch.testing.assert_close(maps, expected, rtol=1e-8, atol=1e-10)


def test_saliency_equals_autograd_reduced_over_channels():
    torch.manual_seed(1)
    model = Conv3dGap().double().eval()
    x = _clip(2, 3, 4, 6, 6, seed=1)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, 2].sum(), leaf)
    torch.testing.assert_close(Saliency(model)(x, target=2), grad.abs().amax(1))
    summed = Saliency(model, reduction="sum")(x, target=2)
    torch.testing.assert_close(summed, grad.sum(1))


def test_occlusion_with_3d_windows_on_a_linear_model():
    # non-overlapping (2, 2, 2) windows: every voxel gets the drop of its own window, the sum
    # of W * x over the window and the channels
    weight = _clip(1, 2, 4, 4, 4, seed=3) - 0.5
    x = _clip(1, 2, 4, 4, 4, seed=4)
    maps = Occlusion(VoxelLinear(weight), window_size=2, stride=2)(x, target=0)
    drop = F.avg_pool3d((weight * x).sum(1, keepdim=True), 2) * 8  # per-window sum
    expected = drop.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    torch.testing.assert_close(maps, expected[:, 0])
    with pytest.raises(ValueError, match=r"window_size=16 is larger .* e\.g\. window_size="):
        Occlusion(VoxelLinear(weight))(x, target=0)
    with pytest.raises(ValueError, match="one per axis"):
        Occlusion(VoxelLinear(weight), window_size=(2, 2))(x, target=0)


def test_sobol_finds_the_planted_cell_of_a_video():
    # the score reads only the voxels of cell (1, 0, 1) of a (2, 2, 2) grid: cells the model
    # ignores get exactly 0
    weight = torch.zeros(1, 3, 4, 8, 8, dtype=torch.float64)
    weight[:, :, 2:, :4, 4:] = 1.0
    x = _clip(1, 3, 4, 8, 8, seed=5) + 0.5
    method = SobolAttribution(VoxelLinear(weight), grid_size=2, n_designs=16, upsample=False)
    cells = method(x, target=0)
    assert cells.shape == (1, 2, 2, 2)
    assert cells[0, 1, 0, 1] > 0.5
    cells[0, 1, 0, 1] = 0
    assert torch.equal(cells, torch.zeros_like(cells))
    full = SobolAttribution(VoxelLinear(weight), grid_size=2, n_designs=16)(x, target=0)
    assert full.shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="temporal_grid_size <= 4"):
        SobolAttribution(VoxelLinear(weight), grid_size=2, temporal_grid_size=5)(x, target=0)


def test_deletion_of_planted_cubes_equals_closed_form():
    # 8 cubes (2, 2, 2) of a (4, 4, 4) volume contribute c = 1..8 (in a shuffled order); the
    # map ranks them right, so after k steps the score is the sum of the 8 - k smallest c
    contributions = torch.tensor([3.0, 8.0, 1.0, 6.0, 2.0, 7.0, 5.0, 4.0], dtype=torch.float64)
    cube = contributions.view(1, 1, 2, 2, 2) / 8  # each of the 8 voxels holds 1/8 of its cube
    weight = cube.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    x = torch.ones(1, 1, 4, 4, 4, dtype=torch.float64)
    result = Deletion(n_steps=8, patch_size=2)(VoxelLinear(weight), x, weight[:, 0], target=0)
    remaining = torch.sort(contributions).values.cumsum(0).flip(0)
    expected = torch.cat([remaining, torch.zeros(1, dtype=torch.float64)])
    assert result.curve is not None
    torch.testing.assert_close(result.curve[0], expected)
    steps = torch.arange(9, dtype=torch.float64) / 8
    torch.testing.assert_close(result.steps, steps)
    torch.testing.assert_close(result.scores[0], torch.trapezoid(expected, steps))


def test_mu_fidelity_of_the_exact_explanation_of_a_linear_video_model_is_one():
    weight = _clip(1, 2, 4, 6, 6, seed=6) - 0.5
    x = _clip(1, 2, 4, 6, 6, seed=7)
    exact = (weight * x).sum(1)
    metric = MuFidelity(grid_size=2, subset_fraction=0.25, n_samples=12)
    result = metric(VoxelLinear(weight), x, exact, target=0)
    torch.testing.assert_close(result.scores, torch.ones(1, dtype=torch.float64))


def test_pointing_game_tolerance_is_a_ball_in_3d():
    maps = torch.zeros(1, 3, 3, 3, dtype=torch.float64)
    maps[0, 0, 0, 0] = 1.0
    mask = torch.zeros(1, 3, 3, 3)
    mask[0, 1, 1, 1] = 1  # sqrt(3) = 1.73 voxels from the peak
    x = torch.zeros(1, 1, 3, 3, 3, dtype=torch.float64)
    assert PointingGame(tolerance=1.8)(None, x, maps, masks=mask).scores.item() == 1
    assert PointingGame(tolerance=1.7)(None, x, maps, masks=mask).scores.item() == 0


def test_baselines_are_per_clip_and_blur_is_per_frame():
    x = _clip(2, 3, 4, 9, 9, seed=8)
    mean = resolve_baseline("mean", x)
    torch.testing.assert_close(mean[:, :, 1, 2, 3], x.mean((2, 3, 4)))
    torch.testing.assert_close(resolve_baseline("min", x)[:, 0, 0, 0, 0], x.flatten(1).amin(1))
    blurred = resolve_baseline("blur", x)
    frame = resolve_baseline("blur", x[:, :, 2])
    torch.testing.assert_close(blurred[:, :, 2], frame)


def test_image_only_metrics_refuse_videos_with_the_reason():
    weight = _clip(1, 1, 2, 4, 4, seed=9)
    x = _clip(1, 1, 2, 4, 4, seed=10)
    with pytest.raises(ValueError, match=r"ROAD scores images only \(its imputation"):
        ROAD()(VoxelLinear(weight), x, weight[:, 0], target=0)
    model = Conv3dGap().double().eval()
    mprt = ModelParameterRandomization(similarity="ssim", layers=["fc"])
    with pytest.raises(ValueError, match="similarity='spearman' for videos"):
        mprt(model, x.expand(1, 3, 2, 4, 4), Saliency(model), target=0)
