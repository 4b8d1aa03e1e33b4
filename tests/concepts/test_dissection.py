"""Network Dissection against planted ground truth and a plain NumPy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.concepts._planted_dissect import Planted, planted_inputs, rect_masks
from tests.conftest import hook_count
from xai.concepts import NetworkDissection, exact_thresholds, filter_masks

ORDERS = ["threshold_then_upsample", "upsample_then_threshold"]


@pytest.fixture(scope="module")
def planted():
    masks = rect_masks(80, 4, 32)
    return planted_inputs(masks), masks


@pytest.mark.parametrize("order", ORDERS)
def test_planted_filter_fires_exactly_on_its_concept(planted, order):
    # coverage of each concept < quantile, so T_k = 0 and filter k's mask is concept k's mask
    x, masks = planted
    assert float(masks.float().mean((0, 2, 3)).max()) < 0.05
    nd = NetworkDissection(Planted(), "features", quantile=0.05, order=order, batch_size=16)
    res = nd.fit((x, masks)).results_["features"]
    iou = res.iou
    assert iou.shape == (4, 6)
    torch.testing.assert_close(iou.diagonal(), torch.ones(4))
    off = iou.clone()
    off[range(4), range(4)] = 0
    assert float(off.max()) < 0.1
    assert res.best_filter.tolist() == [0, 1, 2, 3]
    assert res.unit_label[:4].tolist() == [0, 1, 2, 3]
    assert torch.equal(res.thresholds[:4], torch.zeros(4))


def test_cell_aligned_blocks_are_exact_with_the_net2vec_order():
    # stride-4 layer, squares aligned on the 4-pixel cells: thresholding at layer resolution
    # then upsampling the binary map gives back each block exactly (IoU 1); upsampling the
    # activations first blurs the edges past the threshold (IoU < 1)
    gen = torch.Generator().manual_seed(0)
    n, size, cell = 60, 32, 4
    masks = torch.zeros(n, 2, size, size, dtype=torch.bool)
    for i in range(n):
        for c in range(2):
            if torch.rand(1, generator=gen) < 0.4:
                y, x = (torch.randint(0, size // cell - 1, (2,), generator=gen) * cell).tolist()
                masks[i, c, y : y + 2 * cell, x : x + 2 * cell] = True
    inputs = planted_inputs(masks, n_noise=1)
    labels = masks[:, :, 2::4, 2::4].repeat_interleave(2, 2).repeat_interleave(2, 3)  # 16 px
    ious = {}
    for order in ORDERS:
        nd = NetworkDissection(Planted(stride=4), "features", quantile=0.05, order=order)
        ious[order] = nd.fit((inputs, labels)).results_["features"].iou[:, :2].diagonal()
    torch.testing.assert_close(ious["threshold_then_upsample"], torch.ones(2))
    assert float(ious["upsample_then_threshold"].max()) < 0.9


def _numpy_dissection(acts: np.ndarray, labels: np.ndarray, q: float):
    """Thresholds, set IoU and dataset IoU computed on the whole data at once (stride 1)."""
    n, k, h, w = acts.shape
    m = math.floor(q * n * h * w) + 1
    per_filter = np.moveaxis(acts, 1, 0).reshape(k, -1)
    thresholds = -np.sort(-per_filter, axis=1)[:, m - 1]
    on = acts > thresholds[None, :, None, None]  # (N, K, h, w)
    lab = labels.astype(bool)  # (N, C, h, w)
    inter = np.einsum("nchw,nkhw->ck", lab.astype(np.int64), on.astype(np.int64))
    present = lab.any((2, 3))  # (N, C)
    on_sum = on.sum((2, 3))  # (N, K)
    lab_sum = lab.sum((0, 2, 3))  # (C,)
    with np.errstate(invalid="ignore", divide="ignore"):
        set_iou = inter / (present.T.astype(np.int64) @ on_sum + lab_sum[:, None] - inter)
        dataset_iou = inter / (on_sum.sum(0)[None] + lab_sum[:, None] - inter)
    return thresholds, np.nan_to_num(set_iou), np.nan_to_num(dataset_iou)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_thresholds_and_iou_equal_numpy_on_the_whole_data(batch_size):
    gen = torch.Generator().manual_seed(3)
    acts = torch.rand(37, 5, 6, 6, generator=gen, dtype=torch.float64).float()
    labels = torch.rand(37, 3, 6, 6, generator=gen) < torch.tensor([0.02, 0.1, 0.3])[:, None, None]
    labels[:5] = False  # some images contain no concept at all
    q = 0.01
    ref_t, ref_set, ref_dataset = _numpy_dissection(acts.numpy(), labels.numpy(), q)
    for iou, ref in (("set", ref_set), ("dataset", ref_dataset)):
        nd = NetworkDissection(Planted(), "features", quantile=q, iou=iou, batch_size=batch_size)
        res = nd.fit((acts, labels)).results_["features"]
        np.testing.assert_array_equal(res.thresholds.numpy(), ref_t)
        np.testing.assert_allclose(res.iou.numpy(), ref, rtol=1e-6, atol=1e-7)
    assert ref_set.max() > 0.05  # the comparison is not between two zero matrices


def test_exact_thresholds_is_the_order_statistic_over_chunks():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(50, 3, 4, 4, generator=gen)
    for q in (0.005, 0.05, 0.5):
        got = exact_thresholds(data.split(6), q, total=50)
        m = math.floor(q * 50 * 16) + 1
        flat = data.transpose(0, 1).reshape(3, -1).numpy()
        want = -np.sort(-flat, axis=1)[:, m - 1]
        np.testing.assert_array_equal(got.numpy(), want)
        frac = (data > got[None, :, None, None]).float().mean((0, 2, 3))
        assert bool((frac <= q).all())


@pytest.mark.parametrize("order", ORDERS)
def test_streaming_equals_one_chunk_with_upsampling(order):
    # stride 2: masks are upsampled; any batch size gives the same accumulated counts
    gen = torch.Generator().manual_seed(1)
    masks = rect_masks(30, 3, 16, seed=4)
    x = torch.rand(30, 3, 16, 16, generator=gen) + masks.float()
    runs = [
        NetworkDissection(Planted(stride=2), "features", quantile=0.05, order=order,
                          batch_size=b).fit((x, masks)).results_["features"]
        for b in (1, 4, 30)
    ]  # fmt: skip
    for other in runs[1:]:
        assert torch.equal(other.thresholds, runs[0].thresholds)
        torch.testing.assert_close(other.iou, runs[0].iou, rtol=0, atol=1e-7)
    # and the same as the dense definition on the whole data
    acts = torch.nn.functional.avg_pool2d(x, 2)
    t = runs[0].thresholds
    on = filter_masks(acts, t, (16, 16), order)
    inter = torch.einsum("nchw,nkhw->ck", masks.float(), on.float())
    present = masks.flatten(2).any(2).float()
    union = present.T @ on.flatten(2).sum(2).float() + masks.sum((0, 2, 3))[:, None] - inter
    torch.testing.assert_close(runs[0].iou, (inter / union).float(), rtol=1e-6, atol=1e-7)


def test_dataset_dataloader_and_tensors_agree(planted):
    x, masks = planted
    nd = NetworkDissection(Planted(), "features", quantile=0.05, batch_size=16)
    ref = nd.fit((x, masks)).results_["features"].iou
    via_dataset = nd.fit(TensorDataset(x, masks)).results_["features"].iou
    via_loader = nd.fit(DataLoader(TensorDataset(x, masks), batch_size=9)).results_["features"]
    assert torch.equal(via_dataset, ref)
    assert torch.equal(via_loader.iou, ref)
    # held-out data scored with the fitted thresholds
    held = nd.score((x[:20], masks[:20]))["features"]
    assert held.iou.shape == ref.shape


def test_saturated_filter_warns_and_gets_zero_iou():
    # a 0/1 filter whose concept covers more than q of the positions: T = 1, empty mask
    masks = torch.zeros(20, 1, 8, 8, dtype=torch.bool)
    masks[:, :, :4] = True
    nd = NetworkDissection(Planted(), "features", quantile=0.005)
    with pytest.warns(UserWarning, match="empty mask"):
        nd.fit((masks.float(), masks))
    res = nd.results_["features"]
    assert res.thresholds.tolist() == [1.0]
    assert res.iou.tolist() == [[0.0]]
    assert res.empty_filters == [0]


def test_summary_top_images_and_names(planted):
    x, masks = planted
    data = TensorDataset(x, masks)
    data.concepts = ["a", "b", "c", "d"]
    data.kinds = ["object", "object", "color", "color"]
    nd = NetworkDissection(Planted(), "features", quantile=0.05, n_top=3).fit(data)
    (summary,) = nd.summary()
    assert summary["n_filters"] == 6
    assert summary["per_concept"] == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert summary["per_kind"] == {"object": 2, "color": 2}
    res = nd.results_["features"]
    assert res.concepts == ["a", "b", "c", "d"]
    # top images of filter k are images that contain concept k (their max is 1)
    for k in range(4):
        assert bool(masks[res.top_images[k], k].flatten(1).any(1).all())


def test_model_left_unchanged_and_errors(planted):
    x, masks = planted
    model = Planted()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    NetworkDissection(model, "features", quantile=0.05).fit((x, masks))
    assert hook_count(model) == 0 and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="quantile"):
        NetworkDissection(model, "features", quantile=1.5)
    with pytest.raises(ValueError, match="order"):
        NetworkDissection(model, "features", order="bilinear")
    with pytest.raises(ValueError, match="featurs|features"):
        NetworkDissection(model, "featurs")
    with pytest.raises(ValueError, match="masks"):
        NetworkDissection(model, "features").fit((x, masks[:, 0]))
    with pytest.raises(TypeError, match="bool"):
        NetworkDissection(model, "features").fit((x, masks.float() * 0.5))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        NetworkDissection(model, "features").fit((bad, masks))
    with pytest.raises(RuntimeError, match="fit"):
        NetworkDissection(model, "features").score((x, masks))

    class Boom(Planted):
        def forward(self, inputs):
            self.features(inputs)
            raise RuntimeError("boom")

    boom = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        NetworkDissection(boom, "features").fit((x, masks))
    assert hook_count(boom) == 0
