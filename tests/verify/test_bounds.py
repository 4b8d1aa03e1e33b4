"""Bound propagation: soundness against sampling + PGD, closed forms, hand-derived numbers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xai.verify import (
    BoundedModel,
    UnsupportedOperationError,
    bounds,
    certified_margin,
    make_ball,
    margin_rows,
)
from xai.verify.propagate import _back_affine, _vjp, clipped_relaxation, relu_relaxation

TOL = 1e-9


class AllOps(nn.Module):
    """Every supported rule once: conv (groups, stride, padding), BN, ReLU/ReLU6/LeakyReLU,
    overlapping max pooling, avg pooling, adaptive pooling, residual add, cat, scaling,
    flatten/view, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1, groups=3)
        self.c3 = nn.Conv2d(6, 4, 2, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.avg = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 1 * 1 + 6, 5)

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x)))
        h = h + F.relu6(self.c2(h) * 3.0)
        a = self.pool(h)
        b = F.leaky_relu(self.c3(a), 0.1)
        b = self.avg(b).flatten(1)
        g = self.gap(a).view(a.size(0), -1)
        return self.fc(self.drop(torch.cat([b, g], 1)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.bn(self.b(torch.relu(self.a(h)))))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


def _mlp(seed: int, d: int = 6, width: int = 8, depth: int = 3, k: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    layers, n = [], d
    for _ in range(depth):
        layers += [nn.Linear(n, width), nn.ReLU()]
        n = width
    return nn.Sequential(*layers, nn.Linear(n, k)).double().eval()


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.4, 1.6)
            m.weight.data.uniform_(-1.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model


def _sample(x, eps, mask, norm, n, gen, clip=None):
    """Uniform points of the masked box (L-inf) or ball (L2), plus the box corners."""
    shape = (n, *x.shape)
    if norm == "linf":
        d = torch.rand(shape, generator=gen, dtype=x.dtype) * 2 - 1
        d[: n // 4] = d[: n // 4].sign()  # corners
        pts = x + eps * mask * d
        if clip is not None:
            pts = pts.clamp(*clip)
        return pts
    g = torch.randn(shape, generator=gen, dtype=x.dtype) * mask
    g = g / g.flatten(2).norm(dim=2).clamp_min(1e-30).view(n, x.shape[0], *[1] * (x.dim() - 1))
    free = max(1.0, float(mask[0].sum()))
    r = torch.rand(n, *([1] * x.dim()), generator=gen, dtype=x.dtype) ** (1 / free)
    r[: n // 4] = 1.0  # the sphere
    return x + eps * r * g


def _pgd(model, x, eps, mask, norm, classes, steps=20, clip=None):
    """Maximize max_{j != c} f_j - f_c inside the set; returns the final points."""
    delta = torch.zeros_like(x, requires_grad=True)
    step = 2.5 * eps / steps
    for _ in range(steps):
        out = model(x + delta * mask)
        other = out.clone()
        other[torch.arange(len(x)), classes] = -torch.inf
        margin = other.amax(1) - out.gather(1, classes[:, None])[:, 0]
        (grad,) = torch.autograd.grad(margin.sum(), delta)
        with torch.no_grad():
            if norm == "linf":
                delta += step * grad.sign()
                delta.clamp_(-eps, eps)
            else:
                g = grad * mask
                delta += (
                    step
                    * g
                    / g.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (x.dim() - 1)))
                )
                norms = (delta * mask).flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
                delta *= torch.clamp(eps / norms.clamp_min(1e-30), max=1.0)
    pts = (x + delta * mask).detach()
    return pts.clamp(*clip) if clip is not None else pts


def _check_sound(model, x, eps, mask, norm, clip=None, n=1500, seed=0):
    gen = torch.Generator().manual_seed(seed)
    bm = BoundedModel(model, x)
    ball = make_ball(x, eps, norm=norm, mask=mask, clip=clip)
    node_bounds = bm.node_bounds(ball)
    logit = bounds(model, x, eps, norm=norm, mask=mask, clip=clip)
    classes = bm.forward(x).argmax(1)
    margin = certified_margin(model, x, eps, norm=norm, mask=mask, clip=clip)
    pts = _sample(x, eps, mask, norm, n, gen, clip)
    pts = torch.cat([pts, _pgd(model, x, eps, mask, norm, classes, clip=clip)[None]])
    with torch.no_grad():
        flat = pts.flatten(0, 1)
        values = bm.values(flat)
    for (low, high), v, op in zip(node_bounds, values, bm.graph.ops, strict=True):
        v = v.view(pts.shape[0], x.shape[0], *v.shape[1:])
        assert (v >= low - TOL).all() and (v <= high + TOL).all(), op.name
    out = values[-1].view(pts.shape[0], x.shape[0], -1)
    assert (out >= logit.lower - TOL).all() and (out <= logit.upper + TOL).all()
    true = out.gather(2, classes[None, :, None].expand(len(pts), -1, 1))[..., 0]
    others = out.scatter(2, classes[None, :, None].expand(len(pts), -1, 1), -torch.inf)
    assert (true - others.amax(2) >= margin - TOL).all()
    return logit


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_sound_on_random_mlps(norm):
    gen = torch.Generator().manual_seed(3)
    for seed in range(4):
        model = _mlp(seed)
        x = torch.randn(3, 6, generator=gen, dtype=torch.float64)
        mask = (torch.rand(3, 6, generator=gen) > 0.3).double()
        _check_sound(model, x, 0.3, mask, norm, seed=seed)


@pytest.mark.parametrize("norm,clip", [("linf", None), ("linf", (0.0, 1.0)), ("l2", None)])
def test_sound_on_every_supported_op(norm, clip):
    torch.manual_seed(0)
    model = _randomize_bn(AllOps()).double().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    mask = (torch.rand(2, 1, 8, 8, generator=gen) > 0.3).double().expand(2, 3, 8, 8)
    eps = 0.1 if norm == "linf" else 0.5
    _check_sound(model, x, eps, mask, norm, clip=clip, n=800)


def test_sound_on_a_residual_net():
    torch.manual_seed(2)
    model = _randomize_bn(Residual()).double().eval()
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64)
    _check_sound(model, x, 0.05, torch.ones_like(x), "linf", n=800)


def test_value_at_equals_every_node_and_frees_what_is_no_longer_read():
    """``value_at`` gives each node's value (residual and concatenating graphs included) while
    holding only the live frontier: on a 24-layer chain at most a few outputs are alive at
    once, against all 24 if every value were kept."""
    import weakref

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for model, channels in ((AllOps(), 3), (Residual(), 2)):
        model = _randomize_bn(model).double().eval()
        x = torch.rand(2, channels, 8, 8, generator=gen, dtype=torch.float64)
        bm = BoundedModel(model, x)
        expected = bm.values(x)
        for node in range(len(bm.graph.ops)):
            torch.testing.assert_close(bm.value_at(x, node), expected[node], rtol=0, atol=0)

    convs = [nn.Conv2d(3, 3, 3, padding=1, dtype=torch.float64) for _ in range(24)]
    chain = nn.Sequential(*convs, nn.Flatten(), nn.Linear(3 * 8 * 8, 5, dtype=torch.float64))
    x = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    bm = BoundedModel(chain, x)
    alive, peak = [0], [0]

    def tracked(fn):
        def run(*args):
            out = fn(*args)
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(out, lambda: alive.__setitem__(0, alive[0] - 1))
            return out

        return run

    for op in bm.graph.ops[1:]:
        op.fn = tracked(op.fn)
    with torch.no_grad():
        bm.value_at(x, len(bm.graph.ops) - 1)
    assert len(bm.graph.ops) >= 26 and peak[0] <= 3


def test_exact_on_affine_models():
    torch.manual_seed(0)
    # a single linear layer and a conv -> BN -> avgpool -> flatten -> linear chain
    chain = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2),
        nn.BatchNorm2d(3),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 4),
    )
    chain = _randomize_bn(chain).double().eval()
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    mask = (torch.rand(2, 2, 8, 8) > 0.5).double()
    jac = torch.autograd.functional.jacobian(lambda z: chain(z[None])[0], x[0])  # (4, 2, 8, 8)
    w = jac.flatten(1)
    b = chain(torch.zeros(1, 2, 8, 8, dtype=torch.float64))[0]
    for norm, q in (("linf", 1), ("l2", 2)):
        got = bounds(chain, x, 0.2, norm=norm, mask=mask)
        for i in range(2):
            dual = (w * mask[i].flatten()).norm(p=q, dim=1)
            center = w @ x[i].flatten() + b
            torch.testing.assert_close(got.upper[i], center + 0.2 * dual, rtol=0, atol=1e-10)
            torch.testing.assert_close(got.lower[i], center - 0.2 * dual, rtol=0, atol=1e-10)
    # IBP is exact on one affine layer with the margin rows folded in
    lin = nn.Linear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    c = lin(x).argmax(1)
    rows = margin_rows(c, 3, torch.float64)
    cw = rows @ lin.weight
    expected = -((cw @ x[:, :, None])[..., 0] + rows @ lin.bias + 0.1 * cw.abs().sum(2)).amax(1)
    for bound in ("ibp", "crown"):
        torch.testing.assert_close(
            certified_margin(lin, x, 0.1, bound=bound), expected, rtol=0, atol=1e-10
        )


def test_epsilon_zero_gives_the_point_value():
    torch.manual_seed(0)
    model = _randomize_bn(AllOps()).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
    for bound in ("ibp", "crown"):
        got = bounds(model, x, 0.0, bound=bound)
        torch.testing.assert_close(got.upper, y, rtol=0, atol=1e-12)
        torch.testing.assert_close(got.lower, y, rtol=0, atol=1e-12)
    top2 = y.topk(2, dim=1).values
    torch.testing.assert_close(
        certified_margin(model, x, 0.0), top2[:, 0] - top2[:, 1], rtol=0, atol=1e-12
    )


def test_crown_with_zero_lower_slope_is_never_looser_than_ibp():
    gen = torch.Generator().manual_seed(5)
    checked = 0
    for seed in range(6):
        model = _mlp(seed, depth=2 + seed % 3)
        x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
        bm = BoundedModel(model, x)
        rows = margin_rows(bm.forward(x).argmax(1), 4, torch.float64)
        for eps in (0.05, 0.3, 1.0):
            ball = make_ball(x, eps)
            ibp, crown = bm.upper(ball, rows, relu_lower="zero", parts=True)
            assert (crown <= ibp + 1e-12).all()
            combined = bm.upper(ball, rows)
            ibp_a, crown_a = bm.upper(ball, rows, parts=True)
            torch.testing.assert_close(combined, torch.minimum(ibp_a, crown_a))
            checked += 1
    torch.manual_seed(0)
    model = _randomize_bn(AllOps()).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    bm = BoundedModel(model, x)
    rows = margin_rows(bm.forward(x).argmax(1), 5, torch.float64)
    ibp, crown = bm.upper(make_ball(x, 0.1), rows, relu_lower="zero", parts=True)
    assert (crown <= ibp + 1e-12).all() and checked == 18


def _spec_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    model[0].weight.data = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    model[2].weight.data = torch.eye(2)
    return model.double().eval()


def test_hand_derived_example_of_the_spec():
    # spec section 5.6: x0 = (1, 0.5), c = 0, L-inf eps = 1, cells {x1}, {x2}
    model, x = _spec_model(), torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    bm = BoundedModel(model, x)
    rows = margin_rows(torch.tensor([0]), 2, torch.float64)
    masks = {"full": None, "fix x1": torch.tensor([0.0, 1.0]), "fix x2": torch.tensor([1.0, 0])}
    ibp, crown = {}, {}
    for key, mask in masks.items():
        i, c = bm.upper(make_ball(x, 1.0, mask=mask), rows, parts=True)
        ibp[key], crown[key] = float(i), float(c)
    assert ibp == {"full": 2.5, "fix x1": 1.0, "fix x2": 1.0}
    assert crown == {"full": 1.75, "fix x1": 1.0, "fix x2": -0.5}
    # the CROWN linear bound -0.375 x1 - 1.625 x2 + 0.9375, read from its values at 3 points
    for point, value in (((0.0, 0.0), 0.9375), ((1.0, 0.0), 0.5625), ((0.0, 1.0), -0.6875)):
        p = torch.tensor([point], dtype=torch.float64)
        lam = torch.tensor([[[-0.375, -1.625]]], dtype=torch.float64)
        assert float((lam[0] @ p[0]) + 0.9375) == value
    # L2, IBP with the dual norm on the first layer
    l2 = {
        k: float(bm.upper(make_ball(x, 1.0, mask=m, norm="l2"), rows, bound="ibp"))
        for k, m in masks.items()
    }
    assert l2["full"] == pytest.approx(2 * math.sqrt(2) - 1, abs=1e-12)
    assert l2["fix x1"] == pytest.approx(1.0, abs=1e-12)
    assert l2["fix x2"] == pytest.approx(1.0, abs=1e-12)


def test_relaxations_hold_on_a_dense_grid_of_intervals():
    g = torch.linspace(-9, 13, 67, dtype=torch.float64)
    low, high = torch.meshgrid(g, g, indexing="ij")
    keep = low <= high
    low, high = low[keep], high[keep]
    z = low + torch.linspace(0, 1, 41, dtype=torch.float64)[:, None] * (high - low)
    for mode in ("adaptive", "zero", "one", "same"):
        for relax, fn in (
            (lambda lo, hi, m: relu_relaxation(lo, hi, 0.0, m), torch.relu),
            (lambda lo, hi, m: relu_relaxation(lo, hi, 0.1, m), lambda t: F.leaky_relu(t, 0.1)),
            (lambda lo, hi, m: clipped_relaxation(lo, hi, 6.0, m), F.relu6),
        ):
            a_l, b_l, a_u, b_u = relax(low, high, mode)
            y = fn(z)
            assert (a_l * z + b_l <= y + 1e-12).all() and (a_u * z + b_u >= y - 1e-12).all()


def test_maxpool_relaxation_holds_on_random_boxes():
    pool = nn.Sequential(nn.MaxPool2d(3, 2, padding=1), nn.Flatten()).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 5, generator=gen, dtype=torch.float64)
    for eps in (0.01, 0.3, 2.0):
        got = bounds(pool, x, eps)
        pts = x + eps * (torch.rand(2000, *x.shape, generator=gen, dtype=torch.float64) * 2 - 1)
        y = pool(pts.flatten(0, 1)).view(2000, 3, -1)
        assert (y <= got.upper + TOL).all() and (y >= got.lower - TOL).all()


def test_hand_written_transposes_equal_the_generic_vjp():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
        nn.BatchNorm2d(6),
        nn.Conv2d(6, 3, 2, stride=3, dilation=2),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 5),
    )
    model = _randomize_bn(model).double().eval()
    x = torch.randn(1, 4, 11, 11, dtype=torch.float64)
    bm = BoundedModel(model, x)
    for op in bm.graph.ops[1:]:
        in_shapes = [bm.graph.ops[j].shape for j in op.inputs]
        lam = torch.randn(2, 3, *op.shape, dtype=torch.float64)
        fast, _ = _back_affine(op, lam, in_shapes)
        slow = _vjp(op, lam.flatten(0, 1), in_shapes)
        for a, b in zip(fast, slow, strict=True):
            torch.testing.assert_close(a.flatten(0, 1), b, rtol=1e-12, atol=1e-12)


def test_unsupported_operations_raise_naming_the_node():
    class Gelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.act = nn.GELU()

        def forward(self, x):
            return self.act(self.fc(x))

    class Square(nn.Module):
        def forward(self, x):
            return x * x

    x = torch.randn(2, 3)
    with pytest.raises(UnsupportedOperationError, match=r"GELU at 'act'.*Supported: nn.Linear"):
        bounds(Gelu(), x, 0.1)
    with pytest.raises(UnsupportedOperationError, match="mul.*two bounded tensors"):
        bounds(Square(), x, 0.1)


def test_reductions_indexing_and_a_final_softmax():
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 5, 3)
            self.fc = nn.Linear(5, 6)

        def forward(self, x):
            h = torch.relu(self.conv(x)).mean((2, 3)) + 0.5 * x.sum(dim=(2, 3))[:, :1]
            return self.fc(h)[:, :4].softmax(1)

    torch.manual_seed(0)
    model = Head().double().eval()
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64)
    bm = BoundedModel(model, x)
    assert bm.n_outputs == 4
    logits = model.fc(torch.relu(model.conv(x)).mean((2, 3)) + 0.5 * x.sum((2, 3))[:, :1])[:, :4]
    torch.testing.assert_close(bm.forward(x), logits)
    _check_sound(model, x, 0.05, torch.ones_like(x), "linf", n=300)


def test_bad_arguments_raise_clear_errors():
    model = _mlp(0)
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="norm"):
        bounds(model, x, 0.1, norm="l1")
    with pytest.raises(ValueError, match="epsilon"):
        bounds(model, x, -1.0)
    with pytest.raises(ValueError, match="mask must hold 0"):
        bounds(model, x, 0.1, mask=torch.full((6,), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        bounds(model, x * torch.nan, 0.1)
    with pytest.raises(ValueError, match="unsqueeze"):
        bounds(model, torch.randn(6), 0.1)


def test_model_is_left_unchanged():
    torch.manual_seed(0)
    model = _randomize_bn(AllOps()).double()
    model.bn.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bounds(model, torch.rand(2, 3, 8, 8, dtype=torch.float64), 0.1)
    assert model.bn.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def _small_vgg() -> nn.Module:
    """torchvision's VGG layer builder and forward (features, 7x7 adaptive pool, flatten,
    classifier with dropout) with small widths: the full vgg11 classifier has 100M weights."""
    from torchvision.models.vgg import VGG, make_layers

    model = VGG(
        make_layers([8, "M", 16, "M", 16, 16, "M"], batch_norm=True),
        num_classes=4,
        init_weights=False,
    )
    model.classifier = nn.Sequential(
        nn.Linear(16 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 4)
    )
    return _randomize_bn(model)


@pytest.mark.parametrize("arch", ["resnet18", "vgg"])
def test_torchvision_architectures_trace_and_bound_soundly(arch):
    import torchvision

    torch.manual_seed(0)
    model = _small_vgg() if arch == "vgg" else torchvision.models.resnet18(num_classes=4)
    model = model.eval()
    x = torch.rand(1, 3, 32, 32)
    bm = BoundedModel(model, x)
    with torch.no_grad():
        torch.testing.assert_close(bm.forward(x), model(x), rtol=1e-4, atol=1e-5)
        got = bounds(model, x, 1e-3)
        pts = x + 1e-3 * (torch.rand(16, 3, 32, 32) * 2 - 1)
        y = model(pts)
    assert (y <= got.upper + 1e-4).all() and (y >= got.lower - 1e-4).all()


@pytest.mark.real_model
def test_sound_on_the_real_mobilenet_v2(mobilenet):
    model = mobilenet.double()
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, 32, 32, generator=gen, dtype=torch.float64)
        eps = 1e-4
        bm = BoundedModel(model, x)
        classes = bm.forward(x).argmax(1)
        margin = certified_margin(model, x, eps, top_k=3)
        pts = torch.cat(
            [
                _sample(x, eps, torch.ones_like(x), "linf", 24, gen)[:, 0],
                _pgd(model, x, eps, torch.ones_like(x), "linf", classes, steps=5),
            ]
        )
        with torch.no_grad():
            out = model(pts)
        true = out[:, classes[0]]
        others = out.clone()
        others[:, classes[0]] = -torch.inf
        assert (true - others.amax(1) >= margin - 1e-9).all()
    finally:
        model.float()
