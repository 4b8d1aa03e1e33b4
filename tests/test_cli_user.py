"""``xai explain`` / ``xai audit`` / ``xai layers`` on a user's own model and images (issue 18).

Models: a random-init torchvision resnet18 saved as a state dict by the test, the same model as
TorchScript, and a small CNN from ``module:function``. Images: real photos (scikit-image's
chelsea and coffee) written to a folder by the test, small (64 px) to keep the test fast.
Paths under pytest's tmp_path have no spaces, so argument lists are written as split strings.
"""

from __future__ import annotations

import csv
import json
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision

from xai._cli_user import Preprocess, parse_normalization
from xai.cli import main

skimage_data = pytest.importorskip("skimage.data")

SIZE = 64
PHOTOS = ("chelsea", "coffee")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import cv2

    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        rgb = getattr(skimage_data, name)()
        cv2.imwrite(str(folder / f"{name}.png"), cv2.resize(rgb, (96, 72))[..., ::-1])
    return folder


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    path = tmp_path_factory.mktemp("model") / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _reference_batch(folder):
    """Independent preprocessing: torchvision transforms (resize SIZE/0.875, crop, ImageNet)."""
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(round(SIZE / 0.875)), T.CenterCrop(SIZE), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])  # fmt: skip
    return torch.stack([tf(Image.open(folder / f"{n}.png").convert("RGB")) for n in PHOTOS])


def _ours(folder, names=PHOTOS):
    pre = Preprocess(SIZE, 0.875, parse_normalization("imagenet"))
    return torch.stack([pre.image(folder / f"{n}.png") for n in names])


def _saliency(model, x, target):
    """|d logit / d x|, max over channels: the saliency map by plain autograd."""
    x = x.clone().requires_grad_(True)
    model(x)[0, target].backward()
    return x.grad.abs().amax(1)[0].numpy()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("xai: error: ") and err.count("\n") == 1, err
    return err


def test_explain_state_dict_on_a_photo_folder(resnet, photos, tmp_path):
    model, weights = resnet
    out = tmp_path / "out"
    assert main(f"explain --model resnet18 --weights {weights} --images {photos} --size {SIZE} "
                f"--methods grad_cam,saliency --out {out}".split()) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] == "layer4" and summary["methods"] == ["grad_cam", "saliency"]
    # the weights were loaded (7 classes inferred from the state dict) and the images read and
    # preprocessed as torchvision would: same predicted class as an independent forward pass
    x = _reference_batch(photos)
    with torch.no_grad():
        logits = model(x)
    assert [r["prediction"] for r in summary["images"]] == logits.argmax(1).tolist()
    assert [r["name"] for r in summary["images"]] == list(PHOTOS)
    from matplotlib.image import imread

    for row in summary["images"]:
        for name in ("grad_cam", "saliency"):
            arr = np.load(row["maps"][name])
            assert arr.shape == (SIZE, SIZE) and np.isfinite(arr).all() and arr.std() > 0
        png = imread(row["figure"])
        assert png.shape[1] > 2 * png.shape[0] and png[..., :3].std() > 0.05
    # the CLI's preprocessing (cv2 read, tensor resize) is torchvision's up to interpolation
    ours = _ours(photos)
    assert (ours - x).abs().mean() < 0.05
    expected = _saliency(model, ours[:1], summary["images"][0]["target"])
    found = np.load(summary["images"][0]["maps"]["saliency"])
    np.testing.assert_allclose(found, expected, rtol=1e-3, atol=1e-4 * expected.max())


def test_explain_torchscript_file(resnet, photos, tmp_path):
    model, _ = resnet
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated, still what users have
        torch.jit.trace(model, torch.rand(1, 3, SIZE, SIZE), check_trace=False).save(str(path))
    out = tmp_path / "out"
    assert main(f"explain --model {path} --images {photos}/*.png --size {SIZE} "
                f"--methods saliency,grad_cam --out {out}".split()) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_kind"] == "torchscript" and summary["methods"] == ["saliency"]
    assert "TorchScript takes no hooks" in summary["skipped"]["grad_cam"]
    expected = _saliency(model, _ours(photos, ["coffee"]), summary["images"][1]["target"])
    found = np.load(summary["images"][1]["maps"]["saliency"])
    np.testing.assert_allclose(found, expected, rtol=1e-3, atol=1e-4 * expected.max())


_FACTORY = """
import torch
from torch import nn


def build():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
"""


def test_explain_module_function_and_file_function(photos, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_factory_mod.py").write_text(_FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for i, spec in enumerate(["my_factory_mod:build", f"{tmp_path}/my_factory_mod.py:build"]):
        out = tmp_path / f"out{i}"
        assert main(f"explain --model {spec} --layer 2 --target 1 --images {photos}/chelsea.png "
                    f"--size 32 --methods grad_cam --out {out}".split()) == 0  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())
        assert summary["layer"] == "2" and summary["images"][0]["target"] == 1
        assert np.load(summary["images"][0]["maps"]["grad_cam"]).shape == (32, 32)
    sys.modules.pop("my_factory_mod", None)
    assert main(f"explain --model my_factory_mod:biuld --images {photos} --out {tmp_path}/x"
                .split()) == 2  # fmt: skip
    assert "did you mean build" in _one_line_error(capsys)


def test_wrong_layer_lists_close_matches(resnet, photos, tmp_path, capsys):
    _, weights = resnet
    assert main(f"explain --model resnet18 --weights {weights} --layer layer5 --images {photos} "
                f"--out {tmp_path}".split()) == 2  # fmt: skip
    err = _one_line_error(capsys)
    assert "layer4" in err and "xai layers resnet18" in err
    assert main(["layers", "resnet18", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "(default)" in out.split("layer4 ")[1].splitlines()[0]


def test_bad_inputs_give_one_line_errors(resnet, photos, tmp_path, capsys):
    _, weights = resnet
    cases = [
        ("--model resnet81", "did you mean resnet18"),
        (f"--model resnet18 --weights {tmp_path}/none.pt", "no such file"),
        (f"--model resnet34 --weights {weights}", "do not fit"),
        (f"--model resnet18 --images {tmp_path}/nothing", "no such file"),
        ("--model resnet18 --normalize bogus", "MEAN/STD"),
        (f"--model {weights}", "not a TorchScript file"),
    ]
    for extra, fragment in cases:
        args = f"explain --images {photos} --out {tmp_path}/o {extra}".split()
        assert main(args) == 2, extra
        assert fragment in _one_line_error(capsys), extra


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_checkpoint_is_refused(photos, tmp_path, capsys):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, evil)
    assert main(f"explain --model resnet18 --weights {evil} --images {photos} "
                f"--out {tmp_path}/o".split()) == 2  # fmt: skip
    assert "refused" in _one_line_error(capsys)
    assert not marker.exists()
    # the payload is real: an unsafe load runs it
    control = tmp_path / "control.pt"
    torch.save(_Payload(tmp_path / "ran"), control, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    torch.load(control, weights_only=False)
    assert (tmp_path / "ran").exists()


# ---------------------------------------------------------------------------------- audit

_SHORTCUT_FACTORY = """
from xai.data.shortcuts import SmallCNN


def build():
    return SmallCNN()
"""


@pytest.mark.slow
def test_audit_on_an_image_folder_finds_the_planted_shortcut(tmp_path, capsys, monkeypatch):
    import cv2

    from xai.data.shortcuts import fashion_mnist_available, planted_shortcut_set, train_small_cnn

    if not fashion_mnist_available():
        pytest.skip(
            "needs /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)"
        )
    shirt = 6
    model = train_small_cnn(planted_shortcut_set(3000, shortcut_class=shirt))
    torch.save(model.state_dict(), tmp_path / "cnn.pt")
    (tmp_path / "shortcut_factory.py").write_text(_SHORTCUT_FACTORY)
    # 70% of the test shirts patched: enough unpatched shirts (about 9) for a group comparison
    test = planted_shortcut_set(300, split="test", shortcut_class=shirt, fraction=0.7, seed=1)
    data, masks = tmp_path / "data", tmp_path / "masks"
    rows = [("path", "group")]
    for i, (x, y, m, g) in enumerate(
        zip(test.inputs, test.labels, test.masks, test.groups, strict=True)
    ):
        rel = f"{int(y)}_{test.class_names[int(y)].split('/')[0].lower()}/{i:04d}.png"
        for root, arr in ((data, x[0].numpy() * 255), (masks, m.numpy() * 255)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), np.round(arr).astype(np.uint8))
        rows.append((rel, test.group_names[int(g)]))
    with (tmp_path / "groups.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "report"
    monkeypatch.setattr("xai.audit.report.PRINT_DPI", 50)  # print resolution has its own test
    args = (f"audit --model {tmp_path}/shortcut_factory.py:build --weights {tmp_path}/cnn.pt "
            f"--data {data} --masks {masks} --groups {tmp_path}/groups.csv --size 28 --crop 1 "
            f"--normalize none --method saliency --batch-size 100 --no-progress --out {out}"
            ).split()  # fmt: skip
    assert main(args) == 0
    assert "FLAG" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert {f["class"] for f in report["flags"]} == {shirt}
    flag = next(f for f in report["flags"] if f["kind"] == "fixed_location")
    y0, x0, y1, x1 = test.info["patch_box"]
    by0, bx0, by1, bx1 = flag["box"]
    assert by0 < y1 and y0 < by1 and bx0 < x1 and x0 < bx1  # the flagged cell holds the patch
    assert report["config"]["n_images"] == 300
    # the group file was read: patched shirts are right, unpatched shirts wrong, beyond the CI
    gaps = {(g["class"], g["group_name"]) for g in report["group_accuracy_flags"]}
    assert (shirt, "patch") in gaps
    assert (out / "report.html").stat().st_size > 10_000 and (out / "report.md").exists()
    # resumable: a rerun reads the finished checkpoint and reports the same
    assert (out / "audit-checkpoint.pt").exists()
    assert main(args) == 0
    assert json.loads((out / "report.json").read_text())["flags"] == report["flags"]
