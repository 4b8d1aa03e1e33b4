"""The Grad-CAM family against closed forms, replicas and peer libraries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from tests._models import GapLinear, TinyConvNet, seeded
from tests.conftest import hook_count
from xai.adapter import ModelAdapter
from xai.attributions import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)

pytest.importorskip("pytorch_grad_cam")
import pytorch_grad_cam as pgc  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def _models():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    torch.manual_seed(0)
    mobile = torchvision.models.mobilenet_v2(num_classes=10).eval()
    for model in (resnet, mobile):  # non-trivial BN statistics, as in a trained net
        gen = torch.Generator().manual_seed(1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
    # float64: the peers compute in NumPy; with 1280 channels float32 summation order alone
    # moves near-cancelling pixels by ~1e-3 relative
    return {
        "resnet18": (resnet.double(), "layer4"),
        "mobilenet_v2": (mobile.double(), "features.18"),
    }


MODELS = _models()


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(3)
    return torch.rand(2, 3, 96, 96, generator=gen, dtype=torch.float64)


def _peer_normalized(our_layer_map: torch.Tensor, size) -> np.ndarray:
    """Our layer-resolution map through pytorch-grad-cam's own post-processing, in its order:
    min-max (with its 1e-7 stabilizer) and resize per layer, mean over layers, min-max again.
    Random-init maps can be tiny (1e-11), where the stabilizer dominates a single scaling, so
    the peer's exact order is reproduced rather than our own normalization."""
    per_layer = scale_cam_image(our_layer_map.detach().numpy(), size)
    return scale_cam_image(np.maximum(per_layer[:, None], 0).mean(1))


PEERS = [
    (GradCAM, pgc.GradCAM, {}),
    (GradCAMPlusPlus, pgc.GradCAMPlusPlus, {"eps": 1e-6}),  # the peer's stabilizer
    (XGradCAM, pgc.XGradCAM, {"eps": 1e-7}),
    (LayerCAM, pgc.LayerCAM, {}),
    (HiResCAM, pgc.HiResCAM, {}),
]


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("ours, theirs, kwargs", PEERS, ids=[p[0].__name__ for p in PEERS])
def test_gradient_cams_match_pytorch_grad_cam(model_name, ours, theirs, kwargs, images):
    model, layer = MODELS[model_name]
    targets = [3, 7]
    mine = ours(model, layer, upsample=False, **kwargs)(images, target=targets)
    module = dict(model.named_modules())[layer]
    with theirs(model=model, target_layers=[module]) as cam:
        ref = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    assert hook_count(model) == 0
    np.testing.assert_allclose(_peer_normalized(mine, (96, 96)), ref, atol=1e-4)
    assert float(mine.max()) > 0  # not a trivially empty map


def test_score_cam_matches_pytorch_grad_cam(images):
    import copy

    # float32 (256 masked forward passes per model: float64 would take half a minute); the
    # channel softmax and the 1e-4 tolerance absorb float32 rounding of the scores
    model = copy.deepcopy(MODELS["resnet18"][0]).float()
    targets = [3]  # one image, layer3 is 3x3 at 48 px
    x = images[:1, :, :48, :48].float()
    mine = ScoreCAM(
        model,
        "layer3",
        weighting="channel_softmax",
        align_corners=True,
        upsample=False,
        batch_size=64,
    )(x, target=targets)
    with pgc.ScoreCAM(model=model, target_layers=[model.layer3]) as cam:
        cam.batch_size = 64
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    np.testing.assert_allclose(_peer_normalized(mine, (48, 48)), ref, atol=1e-4)


def test_score_cam_official_weighting_replica():
    """Default weighting: softmax probability of the target for each masked input."""
    model = seeded(TinyConvNet())
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mine = ScoreCAM(model, "features", upsample=False)(x, target=2)
    with ModelAdapter(model).capture(["features"]) as cap:
        model(x)
        acts = cap.activations["features"][0]
    weights = []
    for k in range(acts.shape[0]):
        mask = torch.nn.functional.interpolate(
            acts[None, k : k + 1], size=(16, 16), mode="bilinear", align_corners=False
        )[0, 0]
        mask = (
            (mask - mask.min()) / (mask.max() - mask.min()) if mask.max() > mask.min() else 0 * mask
        )
        with torch.no_grad():
            weights.append(model(x * mask).softmax(1)[0, 2])
    ref = torch.relu(sum(w * a for w, a in zip(weights, acts, strict=True)))
    torch.testing.assert_close(mine[0], ref)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_eigen_cam_matches_pytorch_grad_cam_up_to_the_documented_sign(model_name, images):
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model, layer = MODELS[model_name]
    mine = EigenCAM(model, layer, upsample=False)(images)
    with ModelAdapter(model).capture([layer]) as cap:
        model(images)
        acts = cap.activations[layer].numpy()
    proj = get_2d_projection(acts.copy())  # the peer's (arbitrary-sign) projection
    for i in range(len(images)):
        p = proj[i]
        corr = np.corrcoef(p.ravel(), acts[i].mean(0).ravel())[0, 1]
        expected = np.maximum(p if corr >= 0 else -p, 0)  # our rule: positive with mean map
        np.testing.assert_allclose(mine[i].numpy(), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_grad_cam_matches_captum_layer_grad_cam(model_name, images):
    from captum.attr import LayerGradCam

    model, layer = MODELS[model_name]
    module = dict(model.named_modules())[layer]
    mine = GradCAM(model, layer, upsample=False)(images, target=[1, 4])
    ref = LayerGradCam(model, module).attribute(images, target=[1, 4], relu_attributions=True)
    torch.testing.assert_close(mine, ref[:, 0], rtol=1e-4, atol=1e-7)
    up = GradCAM(model, layer)(images, target=[1, 4])
    ref_up = torch.nn.functional.interpolate(
        ref, size=(96, 96), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(up, ref_up, rtol=1e-4, atol=1e-7)


def test_guided_grad_cam_matches_captum():
    from captum.attr import GuidedGradCam

    model = seeded(TinyConvNet(), dtype=torch.float32)
    model.features[1].inplace = False  # captum's guided backprop cannot hook in-place ReLUs
    model.features[4].inplace = False
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mine = GuidedGradCAM(model, "features", reduction="sum")(x, target=[0, 2])
    ref = GuidedGradCam(model, model.features).attribute(
        x, target=[0, 2], interpolate_mode="bilinear"
    )
    torch.testing.assert_close(mine, ref.sum(1), rtol=1e-4, atol=1e-7)


def test_guided_grad_cam_needs_relu_modules():
    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    model = Functional()
    with pytest.raises(ValueError, match="F.relu"):
        GuidedGradCAM(model, "conv")(torch.rand(1, 3, 8, 8))
    assert hook_count(model) == 0


def test_grad_cam_equals_cam_on_gap_linear():
    """Closed form: on GAP + linear, Grad-CAM = ReLU(sum_k w_ck A_k) / (h w)."""
    model = seeded(GapLinear())
    x = torch.rand(3, 3, 10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 1])
    maps = GradCAM(model, "act", upsample=False)(x, target=targets)
    with torch.no_grad():
        acts = model.act(model.conv(x))
    w = model.fc.weight[targets]  # (B, K)
    cam = torch.relu(torch.einsum("bk,bkhw->bhw", w, acts)) / (10 * 12)
    torch.testing.assert_close(maps, cam)
    # at a layer followed by GAP + linear the gradient is spatially uniform (w / Z), so
    # HiResCAM and XGrad-CAM coincide with Grad-CAM
    torch.testing.assert_close(HiResCAM(model, "act", upsample=False)(x, target=targets), cam)
    torch.testing.assert_close(XGradCAM(model, "act", upsample=False)(x, target=targets), cam)


def test_grad_cam_plus_plus_replica_and_zero_gradients():
    model = seeded(TinyConvNet())
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    mine = GradCAMPlusPlus(model, "features", upsample=False)(x, target=[1, 2])
    adapter = ModelAdapter(model)
    with adapter.capture(["features"]) as cap:
        out = adapter.forward(x, cap)
        cap.backward(out[:, 0] * 0 + out.gather(1, torch.tensor([[1], [2]]))[:, 0])
        A, G = cap.activations["features"], cap.gradients["features"]
    B, K, H, W = A.shape
    ref = torch.zeros(B, H, W, dtype=torch.float64)
    for b in range(B):
        for k in range(K):
            s = A[b, k].sum()
            wk = 0.0
            for i in range(H):
                for j in range(W):
                    g = G[b, k, i, j]
                    den = 2 * g**2 + s * g**3
                    a = g**2 / den if den != 0 and g != 0 else 0.0
                    wk += a * max(float(g), 0.0)
            ref[b] += wk * A[b, k]
    torch.testing.assert_close(mine, torch.relu(ref))
    # a target with zero gradient everywhere gives an all-zero map, never NaN
    with pytest.warns(UserWarning, match="zero everywhere"):
        zero = GradCAMPlusPlus(model, "features")(x, target=lambda out: out.sum(1) * 0)
    assert torch.equal(zero, torch.zeros_like(zero))


def test_multi_layer_fusion():
    model = seeded(TinyConvNet())
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    from xai.attributions import normalize_per_sample, upsample

    a = GradCAM(model, "features.2")(x, target=1)
    b = GradCAM(model, "features")(x, target=1)
    for fusion, op in [
        ("mean", lambda s: s.mean(0)),
        ("max", lambda s: s.max(0).values),
        ("product", lambda s: s.prod(0)),
    ]:
        fused = GradCAM(model, ["features.2", "features"], fusion=fusion)(x, target=1)
        stack = torch.stack([normalize_per_sample(a), normalize_per_sample(b)])
        torch.testing.assert_close(fused, op(stack))
    with pytest.raises(ValueError, match="single layer"):
        GradCAM(model, ["features.2", "features"], upsample=False)
    with pytest.raises(ValueError, match="fusion"):
        GradCAM(model, ["features.2", "features"], fusion="median")
    assert upsample(a, (16, 16)) is a


def test_constant_activation_gives_zero_map_without_nan():
    class Const(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.feat = torch.nn.Identity()
            self.fc = torch.nn.Linear(2, 2)

        def forward(self, x):
            f = self.feat(torch.ones(x.shape[0], 2, 4, 4, dtype=x.dtype) + 0 * x.mean())
            return self.fc(f.mean((2, 3)))

    model = Const().double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    for cls in (GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, EigenCAM, ScoreCAM):
        maps = cls(model, "feat")(x, target=0)
        assert torch.isfinite(maps).all(), cls.__name__


@pytest.mark.real_model
def test_grad_cam_peaks_on_the_object_of_real_photos(mobilenet):
    from xai.data import sample_batch

    x, names = sample_batch(["chelsea", "coffee"])
    maps = GradCAM(mobilenet, "features.18")(x)
    # boxes (rows, cols) measured once on the 224 px center crops: the cat's face (eyes to
    # nose, excluding the fur at the left edge) and the cup with its coffee (not the saucer)
    boxes = {"chelsea": ((40, 224), (40, 224)), "coffee": ((15, 140), (40, 200))}
    for i, name in enumerate(names):
        r, c = divmod(int(maps[i].argmax()), 224)
        (r0, r1), (c0, c1) = boxes[name]
        assert r0 <= r < r1 and c0 <= c < c1, (name, r, c)
