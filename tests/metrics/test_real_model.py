"""Deletion on the real ImageNet MobileNetV2 (64 px inputs to keep it quick).

At this size a zero baseline is far out of distribution, so orderings of AUCs between maps are
not asserted; the test checks the batched engine against a plain per-image loop on a real
network (BN, in-place ReLU6, 8 px patches) and the curve's endpoints."""

from __future__ import annotations

import pytest
import torch

from xai.adapter import ProbabilityTarget
from xai.attributions import GradCAM
from xai.metrics import Deletion


@pytest.mark.real_model
def test_grad_cam_deletion_on_mobilenet(mobilenet):
    from xai.data import sample_batch

    x, _ = sample_batch(["chelsea", "coffee"], size=64)
    maps = GradCAM(mobilenet, "features.18")(x)
    target = ProbabilityTarget(None)
    res = Deletion(n_steps=4, patch_size=8, batch_size=4)(mobilenet, x, maps, target)
    # the engine equals a plain loop: one image per forward, patches ranked by summed relevance
    with torch.no_grad():
        classes = mobilenet(x).argmax(1)
        patches = maps.view(2, 8, 8, 8, 8).sum((2, 4)).flatten(1)
        for b in range(1):
            order = torch.sort(patches[b], descending=True, stable=True).indices
            for s, k in enumerate(res.steps.mul(64).round().long().tolist()):
                mask = torch.zeros(64, dtype=torch.bool)
                mask[order[:k]] = True
                pix = mask.view(8, 1, 8, 1).expand(8, 8, 8, 8).reshape(64, 64)
                xb = torch.where(pix, 0.0, x[b])
                ref = mobilenet(xb[None]).softmax(1)[0, classes[b]]
                assert res.curve[b, s].item() == pytest.approx(ref.item(), abs=1e-5)
    # endpoints: the clean image and the all-zero (mean-colour) image
    with torch.no_grad():
        probs = mobilenet(torch.cat([x, torch.zeros_like(x)])).softmax(1)
    torch.testing.assert_close(res.curve[:, 0], probs[:2].gather(1, classes[:, None])[:, 0])
    torch.testing.assert_close(res.curve[:, -1], probs[2:].gather(1, classes[:, None])[:, 0])
