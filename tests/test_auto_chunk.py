"""``batch_size="auto"`` in :func:`xai.adapter.score_rows`: each row once, same results, and
the size with the most rows per second is kept (planted timings)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai.adapter import as_target, score_rows
from xai.adapter.scoring import AUTO_MAX_CHUNK, _AutoChunk
from xai.metrics import Deletion

F64 = torch.float64


def _run(n_rows: int, batch_size):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double().eval()
    x = torch.randn(n_rows, 3, 2, 2, dtype=F64)
    seen: list[torch.Tensor] = []

    def build(rows):
        seen.append(rows.clone())
        return x[rows]

    scores = score_rows(
        model,
        as_target(1),
        n_rows,
        build,
        torch.zeros(n_rows, dtype=torch.long),
        batch_size=batch_size,
    )
    return scores, seen, model(x)[:, 1].detach()


@pytest.mark.parametrize("n_rows", [1, 2, 5, 300])
def test_auto_scores_every_row_exactly_once(n_rows):
    scores, seen, reference = _run(n_rows, "auto")
    rows = torch.cat(seen)
    assert torch.equal(rows, torch.arange(n_rows))  # in order, no row twice, none missing
    assert max(len(r) for r in seen) <= AUTO_MAX_CHUNK
    torch.testing.assert_close(scores, reference)


def _plan(seconds_per_chunk, n_rows=10_000):
    """Chunk sizes chosen by the tuner when a chunk of ``n`` rows takes ``seconds(n)``."""
    auto, sizes, start = _AutoChunk(), [], 0
    while start < n_rows:
        n = min(auto.size, n_rows - start)
        sizes.append(n)
        if auto.tuning:
            auto.record(n, seconds_per_chunk(n))
        start += n
    return sizes


def test_auto_keeps_one_row_when_single_rows_are_fastest():
    sizes = _plan(lambda n: n * (1.0 + 0.1 * n))  # per-row time grows with the chunk (CPU)
    assert sizes[:4] == [1, 1, 2, 1] and set(sizes[3:]) == {1}


def test_auto_grows_to_the_cap_when_larger_is_faster():
    sizes = _plan(lambda n: 1.0 + 0.01 * n)  # fixed launch cost (GPU)
    assert sizes[:8] == [1, 1, 2, 4, 8, 16, 32, 64] and set(sizes[8:-1]) == {AUTO_MAX_CHUNK}


def test_auto_stops_at_the_knee():
    sizes = _plan(lambda n: 1.0 + 0.01 * n if n <= 8 else n)  # fast up to 8, then slow
    assert sizes[:6] == [1, 1, 2, 4, 8, 16] and set(sizes[6:-1]) == {8}


def test_bad_batch_size_names_the_choices():
    with pytest.raises(ValueError, match="'auto' or None"):
        Deletion(batch_size="fast")
    assert Deletion().batch_size == "auto"
