"""Hostile-but-realistic input (issue 20): no code runs from a file, no silent wrong answer.

Each test targets one failure found by the fuzzing review: before the fix it returned a wrong
or NaN result, ran code from a pickle, or failed with a message that does not name the input.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from tests._models import GapLinear, TinyConvNet, seeded
from tests.conftest import hook_count
from xai import attributions
from xai.attributions import EigenCAM, GradCAM, IntegratedGradients, Occlusion, Saliency
from xai.attributions.lrp import LRP
from xai.audit import audit, write_report
from xai.concepts import ConceptExtractor
from xai.metrics import Deletion, MaxSensitivity, PointingGame, RelevanceMassAccuracy, Sparseness

F64 = torch.float64


def _images(n: int = 3, size: int = 16, dtype=F64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture
def net():
    return seeded(TinyConvNet())


# --- security: checkpoints and reports --------------------------------------------------------


class _Payload:
    """Unpickling this object would create ``path`` (a stand-in for any shell command)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_checkpoint_is_refused_and_never_executed(net, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "state.pt"
    torch.save({"format": "xai.audit/1", "seen": _Payload(str(marker))}, ckpt)
    assert not marker.exists()
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="checkpoint .* cannot be read safely"):
        audit(net, x, labels=y, checkpoint=ckpt, progress=False)
    assert not marker.exists(), "the checkpoint ran code"


def test_checkpoint_holds_plain_types_and_resumes(net, tmp_path):
    x, y = _images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    ckpt = tmp_path / "state.pt"
    ref = audit(net, x, labels=y, batch_size=2, progress=False)
    audit(net, x[:4], labels=y[:4], batch_size=2, checkpoint=ckpt, checkpoint_every=1,
          progress=False)  # fmt: skip
    torch.load(ckpt, weights_only=True)  # readable without unpickling any class
    resumed = audit(net, x, labels=y, batch_size=2, checkpoint=ckpt, progress=False)
    assert repr(resumed.samples) == repr(ref.samples)  # NaN (no masks) compares by repr
    torch.testing.assert_close(resumed.mean_maps, ref.mean_maps)
    torch.save({"something": "else"}, ckpt)
    with pytest.raises(ValueError, match="not an audit checkpoint"):
        audit(net, x, labels=y, checkpoint=ckpt, progress=False)


def test_markdown_report_escapes_user_strings(net, tmp_path):
    x, y = _images(4), torch.tensor([0, 1, 0, 1])
    names = ["<script>alert(1)</script>", "pipe | and\nnewline"]
    result = audit(net, x, labels=y, groups=torch.tensor([0, 0, 1, 1]), class_names=names,
                   group_names=["grp|x\n# heading", "[link](http://evil)"], min_samples=1,
                   progress=False)  # fmt: skip
    path = write_report(result, tmp_path, format="markdown", title="<script>t</script>\n# x")
    text = path["report"].read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "[link](http://evil)" not in text
    assert not any(line.startswith("# x") for line in text.splitlines())
    for table in re.findall(r"((?:^\|.*\|$\n?)+)", text, flags=re.MULTILINE):
        rows = table.strip().splitlines()
        widths = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
        assert len(widths) == 1, f"a user string broke a table: {rows}"


# --- one input check: NaN/Inf, meta device ---------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise_everywhere(net, bad):
    x = _images()
    x[1, 0, 2, 3] = bad
    match = r"inputs contains 1 NaN or Inf"
    with pytest.raises(ValueError, match=match):
        Saliency(net)(x)
    with pytest.raises(ValueError, match=match):
        Deletion(n_steps=2)(net, x, torch.rand(3, 16, 16, dtype=F64))
    with pytest.raises(ValueError, match=match):
        MaxSensitivity(n_samples=2)(net, x, Saliency(net))
    with pytest.raises(ValueError, match=match):
        ConceptExtractor(net, "features", n_concepts=2, patch_size=8).fit(x, 0)
    with pytest.raises(ValueError, match=match):
        audit(net, x, labels=torch.tensor([0, 1, 2]), progress=False)
    from xai.attributions.similarity import SimilarityMaps

    with pytest.raises(ValueError, match=r"references contains 1 NaN"):
        SimilarityMaps(nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                       "0")(_images(1), x)  # fmt: skip
    assert hook_count(net) == 0


def test_meta_device_input_is_named(net):
    with pytest.raises(ValueError, match="inputs is on the meta device"):
        GradCAM(net, "features")(torch.empty(1, 3, 16, 16, device="meta"))


# --- targets and labels --------------------------------------------------------------------


def test_float_targets_are_refused_not_truncated(net):
    x = _images()
    for bad in (torch.tensor(1.7), 1.7, np.float64(1.0), torch.tensor([0.0, 1.0, 2.0]),
                np.array([0.5, 1.0, 2.0]), True):  # fmt: skip
        with pytest.raises(TypeError, match="target"):
            GradCAM(net, "features")(x, target=bad)


def test_numpy_integer_targets_are_accepted(net):
    x = _images()
    method = GradCAM(net, "features")
    ref = method(x, target=[1, 2, 3])
    torch.testing.assert_close(method(x, target=np.array([1, 2, 3])), ref)
    torch.testing.assert_close(method(x, target=[np.int64(1), np.int32(2), 3]), ref)
    torch.testing.assert_close(method(x, target=np.int64(2)), method(x, target=2))
    torch.testing.assert_close(method(x, target=torch.tensor(2)), method(x, target=2))


def test_audit_float_labels_and_nan_batch(net):
    x, y = _images(4), torch.tensor([0, 1, 0, 1])
    with pytest.raises(TypeError, match="labels must hold integer class indices"):
        audit(net, x, labels=y.float() + 0.7, progress=False)
    ok = audit(net, x, labels=y.numpy(), progress=False)  # NumPy labels are fine
    assert ok.samples["label"] == [0, 1, 0, 1]
    x[2] = float("nan")
    with pytest.raises(ValueError, match="inputs contains"):
        audit(net, x, labels=y, progress=False)


def test_concept_extractor_target_checks(net):
    x = _images(4)
    ce = ConceptExtractor(net, "features", n_concepts=2, patch_size=8)
    with pytest.raises(ValueError, match="target class -1 is out of range"):
        ce.fit(x, -1)
    with pytest.raises(ValueError, match="target class 99 is out of range"):
        ce.fit(x, 99)
    with pytest.raises(TypeError, match="target"):
        ce.fit(x, torch.tensor(1.7))
    with pytest.raises(TypeError, match="one class index"):
        ce.fit(x, [0, 1])
    assert ce.fit(x, np.int64(3)).target_ == 3


# --- metrics: degenerate maps --------------------------------------------------------------


def test_metrics_refuse_nan_maps_and_flag_constant_maps(net):
    x = _images(2)
    with pytest.raises(ValueError, match="attributions contains 512 NaN"):
        Deletion(n_steps=2)(net, x, torch.full((2, 16, 16), float("nan")), target=0)
    maps = torch.rand(2, 16, 16, dtype=F64)
    maps[1] = 0.0
    with pytest.warns(UserWarning, match=r"sample\(s\) \[1\] are constant") as rec:
        res = Deletion(n_steps=2)(net, x, maps, target=0)
    assert rec[0].filename == __file__  # attributed to the caller (stacklevel)
    assert torch.isfinite(res.scores[0]) and torch.isnan(res.scores[1])
    assert torch.isfinite(res.curve).all()  # the row-major curve is still returned
    with pytest.warns(UserWarning, match="scored by the formula"):
        assert Sparseness()(None, x, maps).scores[1] == 0  # Gini of a constant map


def test_pointing_game_all_zero_map_and_empty_mask():
    x = torch.zeros(2, 1, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :2, :2] = True  # the argmax of an all-zero map, (0, 0), lies inside
    maps = torch.zeros(2, 8, 8)
    maps[1, 1, 1] = 1.0
    with pytest.warns(UserWarning, match="constant"):
        scores = PointingGame(tolerance=0)(None, x, maps, masks=masks).scores
    assert torch.isnan(scores[0]) and scores[1] == 1.0
    masks[1] = False
    with pytest.warns(UserWarning, match=r"masks of sample\(s\) \[1\] are empty") as rec:
        scores = RelevanceMassAccuracy()(None, x, maps + 1, masks=masks).scores
    assert rec[-1].filename == __file__
    assert torch.isnan(scores[1]) and scores[0] == pytest.approx(4 / 64 * 1 + 0)


# --- compiled models, precision, plain outputs ---------------------------------------------


@pytest.mark.parametrize(
    "make",
    [lambda m: LRP(m), lambda m: GradCAM(m, "features"), lambda m: Saliency(m)],
    ids=["lrp", "grad_cam", "saliency"],
)
def test_compiled_model_gives_the_original_maps(net, make):
    compiled = torch.compile(net)  # lazy: no backend runs, the adapter unwraps _orig_mod
    x = _images()
    torch.testing.assert_close(make(compiled)(x, target=1), make(net)(x, target=1), rtol=0,
                               atol=0)  # fmt: skip
    assert hook_count(net) == 0


def test_integrated_gradients_returns_a_plain_tensor(net):
    maps = IntegratedGradients(net, n_steps=4)(_images())
    assert not maps.requires_grad and maps.grad_fn is None
    maps.numpy()


def _strong_gap_linear() -> nn.Module:
    """Logits about -3 whose occlusion effects (std 0.17) are ~10x bfloat16's spacing there."""
    model = seeded(GapLinear(), dtype=torch.float32)
    with torch.no_grad():
        model.fc.weight.mul_(300)
        model.fc.bias.fill_(3.0)
    return model


def test_occlusion_accumulates_bfloat16_scores_in_float32():
    model = _strong_gap_linear().bfloat16()
    x = _images(2, 16, torch.float32).bfloat16()
    maps = Occlusion(model, window_size=8, stride=4)(x, target=1)
    assert maps.dtype == torch.float32
    # oracle: the same bfloat16 logits, windows and averaging, in float64 by hand
    with torch.no_grad():
        clean = model(x)[:, 1].double()
        total = torch.zeros(2, 16, 16, dtype=F64)
        count = torch.zeros(16, 16, dtype=F64)
        for top in range(0, 9, 4):
            for left in range(0, 9, 4):
                occluded = x.clone()
                occluded[:, :, top : top + 8, left : left + 8] = 0
                total[:, top : top + 8, left : left + 8] += (
                    clean - model(occluded)[:, 1].double()
                )[:, None, None]
                count[top : top + 8, left : left + 8] += 1
    torch.testing.assert_close(maps.double(), total / count, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["occlusion", "sobol_attribution"])
def test_bfloat16_maps_correlate_with_float32_maps(name):
    """bfloat16 keeps 8 significant bits: logits near 3 are rounded to 2^-6 = 0.016, noise of
    std ~0.005 per score against effects of std >= 0.05 here, so the correlation of the maps is
    bounded below by about 1 / sqrt(1 + (2 * 0.005 / 0.05) ** 2) = 0.98; 0.95 leaves a margin
    for the rounding of the inputs and weights."""
    model = _strong_gap_linear()
    kwargs = {"grid_size": 4, "n_designs": 8} if name == "sobol_attribution" else {}
    x = _images(2, 32, torch.float32)
    ref = attributions.get(name).create(model, **kwargs)(x, target=1)
    low = attributions.get(name).create(copy.deepcopy(model).bfloat16(), **kwargs)
    maps = low(x.bfloat16(), target=1)
    for a, b in zip(ref, maps, strict=True):
        assert float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) > 0.95


def test_low_precision_constant_maps_warn():
    """TinyConvNet's logits move by ~1e-3 under occlusion, below bfloat16's spacing (2^-9 at
    0.33): every Sobol score rounds to one value, the map is all zero, and the user is told."""
    model = seeded(TinyConvNet(), dtype=torch.float32).bfloat16()
    x = _images(1, 32, torch.float32).bfloat16()
    sobol = attributions.get("sobol_attribution").create(model, grid_size=4, n_designs=4)
    with pytest.warns(UserWarning, match="round"):
        sobol(x, target=1)


class _Overflow(nn.Module):
    def forward(self, x):
        return x * 1e38 * 1e38  # float32 overflow: finite inputs, infinite activations


def test_eigen_cam_names_non_finite_activations():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _Overflow(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = _images(2, 16, torch.float32)
    with pytest.raises(ValueError, match=r"layer '1' are NaN or Inf for inputs sample"):
        EigenCAM(model, "1")(x)


# --- Score-CAM: masks built per chunk --------------------------------------------------------


def _score_cam_all_masks_first(model, layer, x, target, align_corners):
    """The previous algorithm, literally: every B x K mask upsampled and normalized up front."""
    import torch.nn.functional as F

    acts = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda _m, _i, out: acts.setdefault("a", out.detach().clone())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    a = acts["a"]
    b = a.shape[0]
    masks = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=align_corners)
    flat = masks.flatten(2)
    lo, hi = flat.min(2).values, flat.max(2).values
    span = (hi - lo)[..., None, None]
    masks = torch.where(span > 0, (masks - lo[..., None, None]) / span.clamp_min(1e-12), 0.0)
    with torch.no_grad():
        probs = torch.stack(
            [model(x[i : i + 1] * masks[i, :, None]).softmax(1)[:, target[i]] for i in range(b)]
        ).float()
    cam = torch.relu((probs.to(a.dtype)[:, :, None, None] * a).sum(1))
    return F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[
        :, 0
    ]


@pytest.mark.parametrize("align_corners", [False, True])
def test_score_cam_chunked_masks_equal_the_all_at_once_algorithm(net, align_corners):
    x = _images(2, 20)
    ours = attributions.get("score_cam")(
        net.eval(), "features", batch_size=3, align_corners=align_corners
    )(x, target=[1, 4])
    ref = _score_cam_all_masks_first(net, "features.4", x, [1, 4], align_corners)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("batch_size", [None, 1, 5])
def test_smooth_grad_chunked_noise_equals_mean_gradient_of_noisy_copies(net, batch_size):
    """SmoothGrad draws its noise chunk by chunk (memory bounded by batch_size): the map is
    still the mean over the copies of ``noise()`` of the input gradient, by autograd."""
    x = _images(2)
    method = attributions.get("smooth_grad")(net, n_samples=4, seed=3, batch_size=batch_size)
    noisy = (x[None] + method.noise(x)).flatten(0, 1).requires_grad_(True)
    score = net(noisy).gather(1, torch.tensor([1, 2]).repeat(4)[:, None]).sum()
    (grad,) = torch.autograd.grad(score, noisy)
    ref = grad.view(4, 2, 3, 16, 16).mean(0).abs().amax(1)
    torch.testing.assert_close(method(x, target=[1, 2]), ref, rtol=1e-9, atol=1e-12)
