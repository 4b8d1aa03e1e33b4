"""Fuzz matrix: every registered method x a catalogue of bad inputs and awkward models.

Generated from the registry like ``tests/test_contract.py`` (whose cheap settings, ``FAST``,
are reused): a method registered with ``@register`` joins every row without editing this file.
Each case asserts one of two outcomes:

* **an error of the documented type whose message names the argument** (``inputs``,
  ``target``, ``layer``, ``attributions``, ``labels`` ...), raised before any hook is left;
* **the reference result**: the same map as the plain case (non-contiguous and channels_last
  inputs, NumPy targets, tuple/dict outputs, train flags, frozen parameters, DataParallel,
  float64), or, where no reference exists (float16/bfloat16, one channel, non-square images),
  finite maps of the documented shape and dtype.

Metrics, the concept extractor, similarity maps and the audit get the same treatment below.
Everything runs on 16 px images and an 8-channel net: each case takes milliseconds.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from tests._models import TinyConvNet, seeded
from tests.conftest import hook_count
from tests.test_contract import FAST, LAYER
from tests.test_hardening import _strong_gap_linear
from xai import attributions

# Every method that explains any model (the fuzz models are CNNs); methods of another model
# family (attention methods: model_family "vit") are fuzzed over eight transformer families in
# tests/attributions/test_transformers.py and by the contract test on a tiny ViT.
METHODS = attributions.available("any")
F64 = torch.float64
SIZE = 16


def make(name: str, model: nn.Module, layer: object = LAYER, **kwargs):
    return attributions.get(name).create(model, layer=layer, **{**FAST.get(name, {}), **kwargs})


def images(n: int = 2, size: tuple[int, int] = (SIZE, SIZE), channels: int = 3, dtype=F64):
    gen = torch.Generator().manual_seed(3)
    return torch.rand(n, channels, *size, generator=gen, dtype=dtype)


def net() -> nn.Module:
    return seeded(TinyConvNet())


_REFERENCE: dict[str, torch.Tensor] = {}


def reference(name: str) -> torch.Tensor:
    """The plain case: float64 net, contiguous images, target [1, 3]; computed once."""
    if name not in _REFERENCE:
        _REFERENCE[name] = make(name, net())(images(), target=[1, 3])
    return _REFERENCE[name]


# --- bad inputs and targets: (id, inputs, target, error type, message fragment) -------------

_nan, _inf = images(), images()
_nan[1, 2, 3, 4] = float("nan")
_inf[0, 0, 0, 0] = -float("inf")

BAD_CALLS = [
    ("rank3", images()[0], None, ValueError, r"inputs .*unsqueeze"),
    ("rank2", images()[0, 0], None, ValueError, r"inputs must have shape"),
    # rank 5 (videos) is accepted by some methods: see test_contract.test_videos_and_volumes
    ("rank6", images()[None, None], None, ValueError, r"inputs must have shape"),
    ("uint8", (images() * 255).to(torch.uint8), None, TypeError, r"inputs must be a floating"),
    ("int64", images().long(), None, TypeError, r"inputs must be a floating"),
    ("bool", images() > 0.5, None, TypeError, r"inputs must be a floating"),
    ("numpy", images().numpy(), None, TypeError, r"inputs must be a torch.Tensor"),
    ("nan", _nan, None, ValueError, r"inputs contains 1 NaN or Inf"),
    ("inf", _inf, None, ValueError, r"inputs contains 1 NaN or Inf"),
    ("empty", images(0), None, ValueError, r"inputs is an empty batch"),
    (
        "meta",
        torch.empty(2, 3, SIZE, SIZE, device="meta"),
        None,
        ValueError,
        r"inputs is on the meta",
    ),
    ("target_0d_float", images(), torch.tensor(1.7), TypeError, r"target .*integer class"),
    ("target_float", images(), 1.0, TypeError, r"target must be"),
    ("target_np_float", images(), np.float32(2.0), TypeError, r"target must be"),
    ("target_float_list", images(), [1.0, 2.0], TypeError, r"target .*integer class"),
    ("target_float_array", images(), np.array([1.0, 2.0]), TypeError, r"target .*integer class"),
    ("target_bool", images(), True, TypeError, r"target must be"),
    ("target_str", images(), "cat", TypeError, r"target must be"),
    ("target_2d", images(), torch.tensor([[1, 2]]), ValueError, r"per-sample target"),
    ("target_too_long", images(), [1, 2, 3], ValueError, r"3 targets for a batch of 2"),
    ("target_too_short", images(), [1], ValueError, r"1 targets for a batch of 2"),
    ("target_99", images(), 99, ValueError, r"target class 99 is out of range"),
    ("target_negative", images(), -1, ValueError, r"target class -1 is out of range"),
    ("target_negative_row", images(), [0, -2], ValueError, r"target class -2 is out of range"),
    ("target_np_out_of_range", images(), np.int64(5), ValueError, r"target class 5 is out"),
]


@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
@pytest.mark.parametrize("name", METHODS)
def test_bad_call_raises_naming_the_argument(name, case):
    _, inputs, target, error, message = case
    model = net()
    method = make(name, model)
    with pytest.raises(error, match=message):
        method(inputs, target=target)
    assert hook_count(model) == 0


# --- layers: unknown, off the forward path, without spatial axes ---------------------------


class WithSpare(TinyConvNet):
    """TinyConvNet with a module that is never called in the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Conv2d(8, 8, 1)


@pytest.mark.parametrize(
    "layer, error, message",
    [
        ("featurez", ValueError, r"unknown layer 'featurez'.*'features'"),
        ("spare", RuntimeError, r"layer 'spare' was not called"),
        ("fc", ValueError, r"layer 'fc' has output shape .* no spatial axes"),
    ],
    ids=["unknown", "off_path", "no_spatial_axes"],
)
@pytest.mark.parametrize("name", METHODS)
def test_bad_layer_raises_or_is_ignored(name, layer, error, message):
    """Layer methods name the layer; input-space methods ignore ``layer`` (the reference map):
    a layer method that silently ignored a bad layer would not give the reference map."""
    model = seeded(WithSpare())
    try:
        maps = make(name, model, layer)(images(), target=[1, 3])
    except error as err:
        assert re.search(message, str(err)), str(err)
    else:
        torch.testing.assert_close(maps, reference(name))
    assert hook_count(model) == 0


# --- equivalent inputs and targets: the reference map -------------------------------------


def _non_contiguous(x: torch.Tensor) -> torch.Tensor:
    out = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not out.is_contiguous()
    return out


SAME_CALLS: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], object]] = [
    ("non_contiguous", _non_contiguous, [1, 3]),
    ("channels_last", lambda x: x.contiguous(memory_format=torch.channels_last), [1, 3]),
    ("strided_view", lambda x: x.repeat_interleave(2, dim=3)[..., ::2], [1, 3]),
    ("numpy_targets", lambda x: x, np.array([1, 3])),
    ("numpy_int_scalars", lambda x: x, [np.int64(1), np.int32(3)]),
    ("tensor_targets", lambda x: x, torch.tensor([1, 3])),
    ("tuple_targets", lambda x: x, (1, 3)),
]


@pytest.mark.parametrize("case", SAME_CALLS, ids=[c[0] for c in SAME_CALLS])
@pytest.mark.parametrize("name", METHODS)
def test_equivalent_call_gives_the_reference_map(name, case):
    _, transform, target = case
    x = images()
    before = x.clone()
    maps = make(name, net())(transform(x), target=target)
    torch.testing.assert_close(maps, reference(name), rtol=1e-6, atol=1e-9)
    assert torch.equal(x, before)


# --- awkward models with the same function: the reference map ------------------------------


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = net()

    def forward(self, x):
        out = self.net(x)
        return out, out.detach() * 0  # (logits, auxiliary)


class DictOut(TupleOut):
    def forward(self, x):
        return {"logits": self.net(x), "aux": x.mean()}


def _mixed_flags():
    model = net()
    model.features[3].train()  # a BN in train mode: methods run in eval, flags come back
    model.fc.train()
    return model, LAYER


def _frozen():
    model = net()
    for p in model.features.parameters():
        p.requires_grad_(False)
    return model, LAYER


AWKWARD: list[tuple[str, Callable[[], tuple[nn.Module, str]]]] = [
    ("tuple_output", lambda: (TupleOut(), "net.features")),
    ("dict_output", lambda: (DictOut(), "net.features")),
    ("mixed_train_flags", _mixed_flags),
    ("frozen_parameters", _frozen),
    ("data_parallel", lambda: (nn.DataParallel(net()), LAYER)),
]


@pytest.mark.parametrize("case", AWKWARD, ids=[c[0] for c in AWKWARD])
@pytest.mark.parametrize("name", METHODS)
def test_awkward_model_gives_the_reference_map(name, case):
    model, layer = case[1]()
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    state = copy.deepcopy(model.state_dict())
    maps = make(name, model, layer)(images(), target=[1, 3])
    torch.testing.assert_close(maps, reference(name), rtol=1e-6, atol=1e-9)
    assert all(m.training == t for m, t in flags)
    assert all(p.requires_grad == r for p, r in grads)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert hook_count(model) == 0


# --- dtypes and shapes without a bitwise reference -----------------------------------------


def _one_channel():
    model = net()
    model.features[0] = nn.Conv2d(1, 8, 3, padding=1).double()
    return model, images(channels=1)


SHAPED: list[tuple[str, Callable[[], tuple[nn.Module, torch.Tensor]]]] = [
    ("one_channel", _one_channel),
    ("non_square", lambda: (net(), images(size=(SIZE, 24)))),
    ("tall", lambda: (net(), images(size=(24, SIZE)))),
    ("batch_of_one", lambda: (net(), images(1))),
]


@pytest.mark.parametrize("case", SHAPED, ids=[c[0] for c in SHAPED])
@pytest.mark.parametrize("name", METHODS)
def test_unusual_shapes_give_finite_maps_of_the_input_size(name, case):
    model, x = case[1]()
    maps = make(name, model)(x, target=1)
    assert maps.shape == (x.shape[0], *x.shape[-2:]) and maps.dtype == F64
    assert torch.isfinite(maps).all()
    assert hook_count(model) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", METHODS)
def test_half_precision_maps_follow_float32(name, dtype):
    """Half-precision models give float32 maps that follow the float32 computation.

    The reference is the float32 computation on the *same rounded* weights and inputs, so only
    the arithmetic differs (a method may be sensitive to the rounding of the weights itself:
    Salient Relevance's foci threshold is). Threshold 0.95: bfloat16 keeps 8 significant bits,
    logits near 3 are rounded to 2^-6, against score effects >= 10x that spacing here the
    correlation stays above about 0.98 (tests/test_hardening.py derives it).
    """
    low = _strong_gap_linear().to(dtype)
    x = images(size=(32, 32), dtype=torch.float32).to(dtype)  # 32 px: several windows
    ref = make(name, copy.deepcopy(low).float(), "act")(x.float(), target=[1, 3])
    maps = make(name, low, "act")(x, target=[1, 3])
    assert maps.dtype == torch.float32 and maps.shape == ref.shape
    assert torch.isfinite(maps).all()
    for a, b in zip(ref, maps, strict=True):
        assert float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) > 0.95


def test_float64_is_the_reference_dtype():
    """float64 maps from float64 inputs (the reference case above is float64 throughout)."""
    assert all(reference(name).dtype == F64 for name in METHODS)


# --- metrics -------------------------------------------------------------------------------


def _metrics():
    from xai import metrics as M

    return {
        "deletion": (M.Deletion(n_steps=4), {}),
        "insertion": (M.Insertion(n_steps=4), {}),
        "mu_fidelity": (M.MuFidelity(n_samples=8, grid_size=4), {}),
        "sparseness": (M.Sparseness(), {}),
        "pointing_game": (M.PointingGame(tolerance=0), {"masks": _MASKS}),
        "relevance_mass_accuracy": (M.RelevanceMassAccuracy(), {"masks": _MASKS}),
    }


_MASKS = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
_MASKS[:, 4:10, 4:10] = True
_MAPS = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(5), dtype=F64)
_nan_maps = _MAPS.clone()
_nan_maps[0, 1, 1] = float("nan")

# (id, inputs, maps, target, error, message)
BAD_METRIC_CALLS = [
    ("inputs_nan", _nan, _MAPS, 0, ValueError, r"inputs contains 1 NaN"),
    ("inputs_rank3", images()[0], _MAPS, 0, ValueError, r"inputs .*unsqueeze"),
    ("inputs_int", images().long(), _MAPS, 0, TypeError, r"inputs must be a floating"),
    ("inputs_empty", images(0), _MAPS[:0], 0, ValueError, r"inputs is an empty batch"),
    ("inputs_meta", torch.empty(2, 3, SIZE, SIZE, device="meta"), _MAPS, 0, ValueError, r"meta"),
    ("maps_nan", images(), _nan_maps, 0, ValueError, r"attributions contains 1 NaN"),
    ("maps_all_nan", images(), _MAPS * float("nan"), 0, ValueError, r"attributions contains"),
    ("maps_shape", images(), _MAPS[:, :8], 0, ValueError, r"attributions of shape"),
    ("maps_batch", images(), _MAPS[:1], 0, ValueError, r"attributions of shape"),
    ("maps_list", images(), [[0.0]], 0, TypeError, r"attributions must be"),
]
_MODEL_METRICS = ("deletion", "insertion", "mu_fidelity")
BAD_METRIC_TARGETS = [
    ("target_float", 1.5, TypeError, r"target must be"),
    ("target_0d_float", torch.tensor(1.0), TypeError, r"target .*integer class"),
    ("target_99", 99, ValueError, r"target class 99 is out of range"),
    ("target_length", [0, 1, 2], ValueError, r"3 targets for a batch of 2"),
]
METRIC_NAMES = list(_metrics())


@pytest.mark.parametrize("case", BAD_METRIC_CALLS, ids=[c[0] for c in BAD_METRIC_CALLS])
@pytest.mark.parametrize("metric_name", METRIC_NAMES)
def test_metric_bad_call_raises_naming_the_argument(metric_name, case):
    _, inputs, maps, target, error, message = case
    metric, extra = _metrics()[metric_name]
    with pytest.raises(error, match=message):
        metric(net(), inputs, maps, target, **extra)


@pytest.mark.parametrize("case", BAD_METRIC_TARGETS, ids=[c[0] for c in BAD_METRIC_TARGETS])
@pytest.mark.parametrize("metric_name", _MODEL_METRICS)
def test_metric_bad_target_raises(metric_name, case):
    _, target, error, message = case
    metric, extra = _metrics()[metric_name]
    with pytest.raises(error, match=message):
        metric(net(), images(), _MAPS, target, **extra)


@pytest.mark.parametrize(
    "transform",
    [
        lambda x, m: (_non_contiguous(x), m),
        lambda x, m: (x.contiguous(memory_format=torch.channels_last), m.transpose(1, 2).mT),
        lambda x, m: (x, m.numpy()),
        lambda x, m: (x, m[:, None]),  # (B, 1, H, W) maps
    ],
    ids=["non_contiguous", "channels_last", "numpy_maps", "channel_axis"],
)
@pytest.mark.parametrize("metric_name", METRIC_NAMES)
def test_metric_equivalent_call_gives_the_reference(metric_name, transform):
    metric, extra = _metrics()[metric_name]
    ref = metric(net(), images(), _MAPS, [1, 3], **extra)
    x, maps = transform(images(), _MAPS.clone())
    res = metric(net(), x, maps, np.array([1, 3]), **extra)
    torch.testing.assert_close(res.scores, ref.scores, equal_nan=True)


@pytest.mark.parametrize("metric_name", METRIC_NAMES)
def test_metric_constant_maps_have_the_documented_result(metric_name):
    """A constant map scores NaN (``constant_maps="nan"``) or its formula (``"score"``: finite
    for a non-zero constant), and the caller is warned either way."""
    metric, extra = _metrics()[metric_name]
    maps = _MAPS.clone()
    maps[1] = 0.25
    with pytest.warns(UserWarning, match=r"sample\(s\) \[1\] are constant"):
        res = metric(net(), images(), maps, 0, **extra)
    assert torch.isfinite(res.scores[0])
    assert torch.isnan(res.scores[1]) == (metric.constant_maps == "nan")


def test_max_sensitivity_refuses_nan_inputs_and_bad_explainers():
    from xai.metrics import MaxSensitivity

    with pytest.raises(ValueError, match=r"inputs contains 1 NaN"):
        MaxSensitivity(n_samples=2)(net(), _nan, attributions.get("saliency")(net()))
    with pytest.raises(TypeError, match=r"explainer must be"):
        MaxSensitivity(n_samples=2)(net(), images(), "saliency")


# --- concepts, similarity, audit -----------------------------------------------------------

BAD_CONCEPT_FITS = [
    ("nan", _nan, 0, ValueError, r"inputs contains 1 NaN"),
    ("rank3", images()[0], 0, ValueError, r"inputs .*unsqueeze"),
    ("int", images().long(), 0, TypeError, r"inputs must be a floating"),
    ("empty", images(0), 0, ValueError, r"inputs is an empty batch"),
    ("target_negative", images(), -1, ValueError, r"target class -1 is out of range"),
    ("target_99", images(), 99, ValueError, r"target class 99 is out of range"),
    ("target_float", images(), 1.7, TypeError, r"target must be"),
    ("target_0d_float", images(), torch.tensor(1.0), TypeError, r"target .*integer class"),
    ("target_list", images(), [0, 1], TypeError, r"target must be one class index"),
]


@pytest.mark.parametrize("case", BAD_CONCEPT_FITS, ids=[c[0] for c in BAD_CONCEPT_FITS])
def test_concept_extractor_bad_fit(case):
    from xai.concepts import ConceptExtractor

    _, inputs, target, error, message = case
    model = net()
    with pytest.raises(error, match=message):
        ConceptExtractor(model, LAYER, n_concepts=2, patch_size=8).fit(inputs, target)
    assert hook_count(model) == 0


def test_concept_extractor_numpy_target_and_layout_equal_reference():
    from xai.concepts import ConceptExtractor

    x = images(4)
    ref = ConceptExtractor(net(), LAYER, n_concepts=2, patch_size=8).fit(x, 1)
    other = ConceptExtractor(net(), LAYER, n_concepts=2, patch_size=8)
    other.fit(x.contiguous(memory_format=torch.channels_last), np.int64(1))
    assert other.target_ == 1
    torch.testing.assert_close(other.concepts_, ref.concepts_)


def _embedder() -> nn.Module:
    return nn.Sequential(net().features, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


BAD_SIMILARITY = [
    ("query_nan", _nan[1:], images(), ValueError, r"query contains 1 NaN"),
    ("references_nan", images(1), _nan, ValueError, r"references contains 1 NaN"),
    ("query_rank3", images()[0], images(), ValueError, r"query .*unsqueeze"),
    ("references_int", images(1), images().long(), TypeError, r"references must be a floating"),
    ("references_empty", images(1), images(0), ValueError, r"references is an empty batch"),
    ("query_batch", images(2), images(), ValueError, r"query must hold one image"),
]


@pytest.mark.parametrize("case", BAD_SIMILARITY, ids=[c[0] for c in BAD_SIMILARITY])
def test_similarity_maps_bad_call(case):
    from xai.attributions.similarity import SimilarityMaps

    _, query, refs, error, message = case
    with pytest.raises(error, match=message):
        SimilarityMaps(_embedder(), "0")(query, refs)


def test_similarity_maps_layout_equals_reference():
    from xai.attributions.similarity import SimilarityMaps

    sim = SimilarityMaps(_embedder(), "0")
    q, refs = images(1), images(3)
    ref = sim(q, refs)
    got = sim(_non_contiguous(q), refs.contiguous(memory_format=torch.channels_last))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)


BAD_AUDITS = [
    ("nan", _nan, [0, 1], ValueError, r"inputs contains 1 NaN"),
    ("labels_float", images(), torch.tensor([0.5, 1.0]), TypeError, r"labels must hold integer"),
    ("labels_length", images(), [0, 1, 2], ValueError, r"labels has 3 rows but data has 2"),
    ("labels_negative", images(), [0, -1], ValueError, r"labels must be class indices >= 0"),
    ("rank3", images()[0], [0, 1, 2], ValueError, r"inputs .*unsqueeze"),
]


@pytest.mark.parametrize("case", BAD_AUDITS, ids=[c[0] for c in BAD_AUDITS])
def test_audit_bad_data(case):
    from xai.audit import audit

    _, data, labels, error, message = case
    with pytest.raises(error, match=message):
        audit(net(), data, labels=labels, progress=False)


def test_audit_layout_and_numpy_labels_equal_reference():
    from xai.audit import audit

    ref = audit(net(), images(), labels=torch.tensor([1, 3]), progress=False)
    got = audit(net(), _non_contiguous(images()), labels=np.array([1, 3]), progress=False)
    assert repr(got.samples) == repr(ref.samples)
    torch.testing.assert_close(got.mean_maps, ref.mean_maps)
