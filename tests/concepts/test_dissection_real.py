"""Network Dissection and Net2Vec on the real ImageNet MobileNetV2 with Broden-lite
(skipped without the offline weights or the Tux Paint stamps).

Measured on 300 images at 96 px (seed 0), share of filters whose top concept is a color /
an object: features.1 0.62 / 0.38, features.3 0.42 / 0.54, features.6 0.19 / 0.66,
features.10 0.17 / 0.77, features.14 0.14 / 0.79, features.17 0.04 / 0.96. The tests assert the
direction (colors early, objects deep) with a margin, not these numbers. Net2Vec on
features.14 (240 images, paper defaults: 30 epochs, lr 1e-4): the probe's val set IoU beat the
best single filter for 13/13 object and texture concepts (0.05-0.32 vs 0.00-0.10); the test
trains 10 epochs at lr 3e-4 (same loss) to fit the time budget and asserts >= 11/13.
"""

from __future__ import annotations

import pytest

from xai.concepts import Net2Vec, NetworkDissection
from xai.data.shortcuts import tuxpaint_available

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(not tuxpaint_available(), reason="apt-get install tuxpaint-stamps-default"),
]
EARLY, DEEP = ["features.1", "features.3"], ["features.14", "features.17"]


@pytest.fixture(scope="module")
def data():
    from xai.data.broden_lite import BrodenLite

    return BrodenLite(240, size=96, seed=0)


def _share(result, kinds, kind):
    labels = result.unit_label.tolist()
    return sum(kinds[c] == kind for c in labels) / len(labels)


@pytest.mark.filterwarnings("ignore:.*empty mask")  # dead filters of a real network
def test_colors_in_early_layers_objects_in_deep_layers(mobilenet, data):
    nd = NetworkDissection(mobilenet, EARLY + DEEP, batch_size=48).fit(data)
    share = {
        kind: {name: _share(nd.results_[name], data.kinds, kind) for name in EARLY + DEEP}
        for kind in ("color", "object")
    }
    early_color = sum(share["color"][n] for n in EARLY) / 2
    deep_color = sum(share["color"][n] for n in DEEP) / 2
    early_object = sum(share["object"][n] for n in EARLY) / 2
    deep_object = sum(share["object"][n] for n in DEEP) / 2
    assert early_color > deep_color + 0.2, share
    assert deep_object > early_object + 0.2, share
    # the best IoU of object concepts grows with depth too
    objects = [i for i, k in enumerate(data.kinds) if k == "object"]
    best = {n: float(nd.results_[n].best_iou[objects].mean()) for n in EARLY + DEEP}
    assert min(best[n] for n in DEEP) > max(best[n] for n in EARLY), best
    summary = nd.summary()
    assert [s["layer"] for s in summary] == EARLY + DEEP
    assert summary[-1]["per_kind"]["object"] >= summary[0]["per_kind"]["object"]


def test_net2vec_beats_the_best_single_filter_on_objects(mobilenet, data):
    concepts = data.concepts[:13]  # the 10 objects and 3 textures
    probe = Net2Vec(mobilenet, "features.14", epochs=10, lr=3e-4, batch_size=48)
    probe.fit(data.train(), concepts=concepts)
    val = data.val()
    combined, single = probe.score(val), probe.single_filter_score(val)
    assert int((combined > single).sum()) >= 11, (combined, single)
    assert float(combined.mean()) > 2 * float(single.mean())
    sim = probe.similarity()
    assert sim.shape == (13, 13)
