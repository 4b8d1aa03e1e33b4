"""Dataset scale: the mergeable audit state, safe checkpoints, the Ray engine and the
batch-explanation shards give exactly the in-process numbers."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from xai.attributions.gradients import Saliency
from xai.audit import audit
from xai.audit.scoring import batch_stats
from xai.audit.state import AuditState, load_state
from xai.data.shortcuts import fashion_mnist_available, planted_shortcut_set, train_small_cnn

ROOT = Path(__file__).resolve().parents[2]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64, 5),
        )
        .double()
        .eval()
    )


def _data(n: int = 90):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(n, 1, 12, 12, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (n,), generator=gen)
    m = torch.rand(n, 12, 12, generator=gen) > 0.6
    g = torch.randint(0, 3, (n,), generator=gen)
    return x, y, m, g


def _state(model, method, x, y, m, g, start: int, stop: int, batch: int) -> AuditState:
    state = AuditState(grid_size=3, n_worst=3, keep_for_concepts=4)
    for s in range(start, stop, batch):
        e = min(s + batch, stop)
        stats = batch_stats(
            method, model, x[s:e], y[s:e], m[s:e], g[s:e], s, 3, "label", state.image_size
        )
        state.image_size = state.image_size or (12, 12)
        state.update(stats)
    return state


def _assert_same_state(a: AuditState, b: AuditState) -> None:
    ca, cb = a.columns(), b.columns()
    for k in ca:
        torch.testing.assert_close(ca[k], cb[k], rtol=0, atol=0, equal_nan=True, msg=k)
    torch.testing.assert_close(a.class_counts, b.class_counts, rtol=0, atol=0)
    torch.testing.assert_close(a.class_hotspots, b.class_hotspots, rtol=0, atol=0)
    torch.testing.assert_close(a.class_map_sums, b.class_map_sums, rtol=1e-12, atol=1e-12)
    assert {c: [d["index"] for d in v] for c, v in a.worst.items()} == {
        c: [d["index"] for d in v] for c, v in b.worst.items()
    }
    assert a.concept_index == b.concept_index
    assert a.seen == b.seen


def test_vectorized_state_matches_a_per_sample_replica_and_merges_exactly():
    model, (x, y, m, g) = _net(), _data()
    method = Saliency(model)
    whole = _state(model, method, x, y, m, g, 0, 90, 20)
    # replica of the per-sample definitions, straight from one explainer call
    maps = method(x, target=y).double()
    pos = maps.clamp_min(0).flatten(1)
    mass = (pos * m.flatten(1)).sum(1) / pos.sum(1)
    cols = whole.columns()
    torch.testing.assert_close(cols["mass_inside"], mass, rtol=1e-12, atol=1e-12)
    peak = maps.flatten(1).argmax(1)
    torch.testing.assert_close(cols["peak_row"], peak // 12)
    torch.testing.assert_close(cols["hit"], m.flatten(1)[torch.arange(90), peak].double())
    for c in range(5):
        sel = y == c
        norm = pos[sel] / pos[sel].amax(1, keepdim=True)
        torch.testing.assert_close(whole.class_map_sums[c], norm.sum(0).view(12, 12))
        worst_ref = sorted(range(90), key=lambda i: (float(mass[i]), i))
        worst_ref = [i for i in worst_ref if int(y[i]) == c][:3]
        assert [d["index"] for d in whole.worst[c]] == worst_ref
        assert whole.concept_index[c] == sel.nonzero()[:4, 0].tolist()
    # shards in any grouping merge into the single pass
    parts = [_state(model, method, x, y, m, g, s, e, 20) for s, e in ((40, 90), (0, 40))]
    merged = AuditState(3, 3, 4).merge(parts[0]).merge(parts[1])
    _assert_same_state(merged, whole)
    with pytest.raises(ValueError, match="counted twice"):
        merged.merge(_state(model, method, x, y, m, g, 0, 20, 20))


def test_checkpoint_is_tensors_only_and_a_malicious_file_is_refused(tmp_path):
    model, (x, y, m, g) = _net(), _data(30)
    state = _state(model, Saliency(model), x, y, m, g, 0, 30, 10)
    path = tmp_path / "ckpt.pt"
    state.save(path)
    _assert_same_state(load_state(path), state)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"version": 1, "x": Evil()}))
    with pytest.raises(ValueError, match="cannot be read safely"):
        load_state(evil)
    with pytest.raises(ValueError, match="cannot be read safely"):
        audit(model, x, labels=y, checkpoint=evil, progress=False)
    assert not marker.exists()


def test_local_engine_reuses_the_explainers_forward_for_predictions():
    model, (x, y, m, _g) = _net(), _data(40)
    calls = []

    class Counting(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, inp):
            calls.append(inp.shape[0])
            return self.inner(inp)

    counted = Counting(model).eval()
    result = audit(
        counted, x, labels=y, masks=m, explainer=Saliency(counted), batch_size=20, progress=False
    )
    assert calls == [20, 20]  # one forward per batch: the explainer's, observed
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    assert result.samples["prediction"] == pred


# ----------------------------------------------------------------------------- Ray
ray = pytest.importorskip("ray", reason="pip install 'ray[data]' (in the test extra)")
needs_fmnist = pytest.mark.skipif(
    not fashion_mnist_available(), reason="apt-get install -y dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    model = train_small_cnn(planted_shortcut_set(2000, shortcut_class=6))
    test = planted_shortcut_set(300, split="test", shortcut_class=6, seed=1)
    return model, test


class Faulty:
    """An explainer that kills its worker process (or raises) once, on a given call."""

    def __init__(self, inner, folder: str, on_call: int, how: str) -> None:
        self.inner, self.folder, self.on_call, self.how = inner, folder, on_call, how

    def __call__(self, inputs, target=None):
        folder = Path(self.folder)
        n = len(list(folder.glob("call-*")))
        (folder / f"call-{n:04d}-{os.getpid()}").touch()
        fired = folder / "fired"
        if n + 1 == self.on_call and not fired.exists():
            fired.touch()
            if self.how == "kill":
                os._exit(1)
            raise RuntimeError("injected failure")
        return self.inner(inputs, target=target)


def _compare(a, b) -> None:
    for table in ("classes", "groups", "class_groups", "flags"):
        ra, rb = getattr(a, table), getattr(b, table)
        assert len(ra) == len(rb)
        for x, y in zip(ra, rb, strict=True):
            assert x.keys() == y.keys()
            for k in x:
                if isinstance(x[k], float):
                    assert (math.isnan(x[k]) and math.isnan(y[k])) or x[k] == pytest.approx(
                        y[k], rel=1e-9, abs=1e-12
                    ), (table, k)
                else:
                    assert x[k] == y[k], (table, k)
    assert a.samples.keys() == b.samples.keys()
    for k in a.samples:
        np.testing.assert_allclose(
            np.asarray(a.samples[k], dtype=float), np.asarray(b.samples[k], dtype=float), rtol=1e-9
        )
    torch.testing.assert_close(a.mean_maps, b.mean_maps)
    torch.testing.assert_close(a.hotspot_counts, b.hotspot_counts)
    assert {c: [d["index"] for d in v] for c, v in a.worst.items()} == {
        c: [d["index"] for d in v] for c, v in b.worst.items()
    }


@needs_fmnist
def test_ray_audit_equals_local_even_when_an_actor_is_killed(cluster, planted, tmp_path):
    model, test = planted
    kw = dict(
        labels=test.labels,
        masks=test.masks,
        groups=test.groups,
        class_names=test.class_names,
        group_names=test.group_names,
        batch_size=50,
        progress=False,
    )
    local = audit(model, test.inputs, explainer=Saliency(model), **kw)
    assert 6 in local.flagged_classes  # the planted shortcut is there to be found
    faulty = Faulty(Saliency(model), str(tmp_path), on_call=3, how="kill")
    remote = audit(
        model,
        test.inputs,
        explainer=faulty,
        engine="ray",
        num_workers=2,
        ray_options={"shard_size": 100},
        **kw,
    )
    assert (tmp_path / "fired").exists()  # a worker really died mid-run
    _compare(remote, local)
    assert sorted(remote.samples["index"]) == list(range(len(test)))  # nobody twice
    assert remote.config["engine"] == "ray"


@needs_fmnist
def test_restarted_ray_job_skips_finished_shards(cluster, planted, tmp_path):
    model, test = planted
    calls = tmp_path / "calls"
    calls.mkdir()
    kw = dict(labels=test.labels, masks=test.masks, batch_size=50, progress=False)
    opts = {"shard_size": 50, "checkpoint_dir": str(tmp_path / "shards")}
    faulty = Faulty(Saliency(model), str(calls), on_call=4, how="raise")
    with pytest.raises(Exception, match="injected failure"):
        audit(
            model,
            test.inputs,
            explainer=faulty,
            engine="ray",
            num_workers=1,
            ray_options=opts,
            **kw,
        )
    finished = len(list((tmp_path / "shards").glob("shard-*.pt")))
    assert 1 <= finished < 6
    before = len(list(calls.glob("call-*")))
    resumed = audit(
        model, test.inputs, explainer=faulty, engine="ray", num_workers=1, ray_options=opts, **kw
    )
    recomputed = len(list(calls.glob("call-*"))) - before
    assert recomputed == 6 - finished  # one explainer call per unfinished shard only
    _compare(resumed, audit(model, test.inputs, explainer=Saliency(model), **kw))
    with pytest.raises(ValueError, match="another job"):
        audit(
            model, test.inputs, explainer=faulty, engine="ray", grid_size=5, ray_options=opts, **kw
        )


def test_explain_dataset_shards_equal_in_memory_maps(cluster, tmp_path):
    from xai.audit.distributed import explain_dataset, load_maps

    model, (x, y, _m, _g) = _net(), _data(70)
    method = Saliency(model)
    expected = method(x, target=y).float()
    files = explain_dataset(
        model,
        x,
        tmp_path / "maps",
        explainer=method,
        labels=y,
        batch_size=16,
        shard_size=30,
        num_workers=2,
        progress=False,
    )
    assert len(files) == 3 and all(f.is_file() for f in files)
    index, maps = load_maps(tmp_path / "maps")
    assert index.tolist() == list(range(70))
    torch.testing.assert_close(maps, expected, rtol=1e-6, atol=1e-7)
    # a resumed job recomputes only the missing shard (on Ray: renumbered sub-shards)
    first = files[0].stat().st_mtime_ns
    files[1].unlink()
    explain_dataset(
        model,
        x,
        tmp_path / "maps",
        explainer=method,
        labels=y,
        batch_size=16,
        shard_size=30,
        num_workers=1,
        progress=False,
    )
    assert files[0].stat().st_mtime_ns == first
    torch.testing.assert_close(load_maps(tmp_path / "maps")[1], expected, rtol=1e-6, atol=1e-7)
    # Parquet shards (local engine) hold the same maps
    explain_dataset(
        model,
        x,
        tmp_path / "pq",
        explainer=method,
        labels=y,
        batch_size=16,
        shard_size=30,
        engine="local",
        file_format="parquet",
        progress=False,
    )
    index, maps = load_maps(tmp_path / "pq")
    assert index.tolist() == list(range(70))
    torch.testing.assert_close(maps, expected, rtol=1e-6, atol=1e-7)


def test_ray_engine_errors():
    model, (x, y, _m, _g) = _net(), _data(10)
    with pytest.raises(ValueError, match="engine must be"):
        audit(model, x, labels=y, engine="spark", progress=False)
    with pytest.raises(ValueError, match="checkpoint= is for the local engine"):
        audit(model, x, labels=y, engine="ray", checkpoint="x.pt", progress=False)
    loader = torch.utils.data.DataLoader(list(zip(x, y, strict=True)), batch_size=5)
    with pytest.raises(TypeError, match="address by index"):
        audit(model, loader, engine="ray", progress=False)
