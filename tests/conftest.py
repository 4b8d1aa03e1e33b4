"""Shared fixtures; tests run on CPU, numerical tests in float64."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# 2 threads on CI's 2 cores; XAI_TEST_THREADS=1 on a machine shared by several processes
# (oversubscribed intra-op threads make small convolutions orders of magnitude slower)
torch.set_num_threads(int(os.environ.get("XAI_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


def hook_count(model: torch.nn.Module) -> int:
    """Number of hooks of every kind registered on the model's modules."""
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


@pytest.fixture(scope="session")
def mobilenet():
    """The real ImageNet MobileNetV2 from the offline weights package (skipped if missing)."""
    from xai.data import load_mobilenet_v2

    try:
        return load_mobilenet_v2()
    except FileNotFoundError as err:
        pytest.skip(str(err))


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
