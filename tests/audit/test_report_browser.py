"""The audit report's HTML renders its figures in a real browser (headless Debian chromium).

A screenshot of the report is compared with a screenshot of the same page with its <img> tags
removed: the figures (inferno maps, bars) must add many coloured pixels. Skipped when chromium
is not installed (scripts/setup.sh installs it as root).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from tests._models import TinyConvNet
from xai.audit import audit, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs chromium (apt-get install chromium)"
)


def _screenshot(page, png, profile) -> np.ndarray:
    from PIL import Image

    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
           f"--user-data-dir={profile}", "--window-size=1200,5000", f"--screenshot={png}",
           page.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert png.exists(), f"no screenshot (rc {proc.returncode}): {proc.stderr[-1500:]}"
    return np.asarray(Image.open(png).convert("RGB")).astype(np.int16)


def _colored(img: np.ndarray) -> int:
    """Pixels with a saturated colour (text is black/grey, the page white)."""
    return int(((img.max(2) - img.min(2)) > 60).sum())


def test_report_renders_its_figures_in_chromium(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(12, 3, 16, 16)
    masks = torch.zeros(12, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    result = audit(
        TinyConvNet(n_classes=2),
        x,
        labels=torch.tensor([0, 1] * 6),
        masks=masks,
        min_samples=2,
        progress=False,
    )
    page = write_report(result, tmp_path / "report")["report"]
    html = page.read_text()
    assert html.count("<img") == 4
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<img[^>]*>", "", html))
    shot = _screenshot(page, tmp_path / "report.png", tmp_path / "profile1")
    without = _screenshot(bare, tmp_path / "bare.png", tmp_path / "profile2")
    assert shot.shape == without.shape
    # the page itself rendered (title text) in both, and the figures add coloured pixels
    assert (shot < 128).any(axis=2).sum() > 500 and (without < 128).any(axis=2).sum() > 500
    assert _colored(shot) > _colored(without) + 50_000, (_colored(shot), _colored(without))
