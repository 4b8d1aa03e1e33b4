"""``batch_size="auto"`` in :func:`xai.adapter.score_rows`: each row once, the same results as a
fixed size, and the tuner's choices under planted timings (a fake clock advanced by the model:
no wall-clock assertion anywhere).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from xai.adapter import (
    AUTO_MAX_CHUNK,
    ProbabilityTarget,
    as_target,
    auto_batch_sizes,
    reset_auto_batch_sizes,
    score_rows,
    scoring,
)
from xai.metrics import Deletion, Insertion, PixelFlipping

F64 = torch.float64


class Clock:
    """A fake clock: only :class:`Timed` forwards advance it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Timed(nn.Module):
    """A linear model whose forward of ``n`` rows takes ``cost(n)`` fake seconds; it logs ``n``.

    ``cost`` may also take the index of the call (to plant a preempted chunk).
    """

    def __init__(self, clock: Clock, cost: Callable[..., float], features: int = 12) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, 3)).double()
        self.clock, self.cost = clock, cost
        self.sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        try:
            self.clock.now += self.cost(n, len(self.sizes))
        except TypeError:
            self.clock.now += self.cost(n)
        self.sizes.append(n)
        return self.net(x)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(scoring, "_clock", fake)
    reset_auto_batch_sizes()
    yield fake
    reset_auto_batch_sizes()


def _score(model: nn.Module, n_rows: int, width: int = 2, batch_size="auto") -> Tensor:
    x = torch.randn(n_rows, 3, 2, width, dtype=F64, generator=torch.Generator().manual_seed(1))
    return score_rows(
        model,
        as_target(1),
        n_rows,
        lambda rows: x[rows],
        torch.zeros(n_rows, dtype=torch.long),
        batch_size=batch_size,
    )


def _per_row(table: dict[int, float]) -> Callable[[int], float]:
    """A chunk of ``n`` rows costs ``n * table[n]`` (sizes not in the table: 10 per row)."""
    return lambda n: n * table.get(n, 10.0)


@pytest.mark.parametrize("n_rows", [1, 2, 5, 300])
def test_auto_scores_every_row_exactly_once(n_rows, clock):
    model = Timed(clock, _per_row({1: 1.0, 2: 0.85, 4: 0.6, 8: 0.7}))
    x = torch.randn(n_rows, 3, 2, 2, dtype=F64)
    for _ in range(2):  # tuning, then the remembered size (its first chunk built in two parts)
        seen: list[Tensor] = []

        def build(rows, seen=seen):
            seen.append(rows.clone())
            return x[rows]

        scores = score_rows(
            model, as_target(1), n_rows, build, torch.zeros(n_rows).long(), batch_size="auto"
        )
        rows = torch.cat(seen)
        assert torch.equal(rows, torch.arange(n_rows))  # in order, no row twice, none missing
        assert max(len(r) for r in seen) <= AUTO_MAX_CHUNK
        torch.testing.assert_close(scores, model.net(x)[:, 1].detach())


def test_picks_the_fastest_size(clock):
    model = Timed(clock, _per_row({1: 1.0, 2: 0.85, 4: 0.6, 8: 0.7}))
    _score(model, 1000)
    # warm-up row, then each size timed twice, except 4: 29% faster than 2 on its first chunk
    # (load only slows chunks down); 8 is slower than 4: 4 for the rest
    assert model.sizes[:8] == [1, 1, 1, 2, 2, 4, 8, 8]
    assert set(model.sizes[8:-1]) == {4}
    (choice,) = auto_batch_sizes(model).values()
    assert choice.size == 4 and choice.done
    assert choice.seconds_per_row == pytest.approx({1: 1.0, 2: 0.85, 4: 0.6, 8: 0.7})


def test_keeps_one_row_when_larger_chunks_are_slower(clock):
    model = Timed(clock, lambda n: n * (1.0 + 0.05 * n))  # per-row cost grows (a small CPU)
    _score(model, 1000)
    assert model.sizes[:7] == [1, 1, 1, 2, 2, 4, 4]  # 2 within the margin: 4 is tried too
    assert set(model.sizes[7:]) == {1}


def test_needs_a_clear_margin_to_grow(clock):
    model = Timed(clock, _per_row({1: 1.0, 2: 0.95, 4: 0.92, 8: 0.1}))  # 5% and 3% gains
    _score(model, 1000)
    # 2 and 4 not clearly faster: 8 is never tried; the fastest measured (4) is kept
    assert model.sizes[:7] == [1, 1, 1, 2, 2, 4, 4]
    assert set(model.sizes[7:-1]) == {4}
    assert auto_batch_sizes(model).popitem()[1].done


def test_one_preempted_chunk_does_not_decide(clock):
    # the first timed chunk of one row is preempted (5 s); the second shows 1 s per row
    cost = lambda n, call: 5.0 if call == 1 else n * {1: 1.0, 2: 1.5}.get(n, 3.0)  # noqa: E731
    model = Timed(clock, cost)
    _score(model, 1000)
    assert set(model.sizes[5:]) == {1}
    assert auto_batch_sizes(model).popitem()[1].seconds_per_row[1] == pytest.approx(1.0)


def test_grows_to_the_cap_when_larger_is_faster(clock):
    model = Timed(clock, lambda n: 1.0 + 0.01 * n)  # fixed launch cost (a GPU)
    _score(model, 5000)
    timed = [1, 1, 1, 2, 4, 8, 16, 32, 64]  # each size far faster: no second timing
    assert model.sizes[: len(timed)] == timed
    assert set(model.sizes[len(timed) : -1]) == {AUTO_MAX_CHUNK}


def test_never_exceeds_a_lower_cap(clock, monkeypatch):
    monkeypatch.setattr(scoring, "AUTO_MAX_CHUNK", 8)
    model = Timed(clock, lambda n: 1.0 + 0.01 * n)
    _score(model, 1000)
    assert max(model.sizes) == 8 and model.sizes[-2] == 8
    assert auto_batch_sizes(model).popitem()[1].done


def test_tuning_is_a_bounded_share_of_a_short_run_and_resumes_next_call(clock):
    model = Timed(clock, lambda n: 1.0 + 0.01 * n)  # larger is always faster
    _score(model, 60)
    # the credit is an eighth of 60 rows: 2 and 4 take 6 of them, 8 would need 8
    assert model.sizes[:5] == [1, 1, 1, 2, 4]
    assert set(model.sizes[5:-1]) == {4} and sum(model.sizes) == 60
    (choice,) = auto_batch_sizes(model).values()
    assert choice.size == 4 and not choice.done and choice.trial == 8
    model.sizes.clear()
    _score(model, 1000)  # a longer call goes on from 8, without timing 1, 2, 4 again
    assert model.sizes[:6] == [4, 8, 16, 32, 64, 64]
    assert auto_batch_sizes(model).popitem()[1].done


def test_short_calls_tune_a_size_every_few_calls_within_the_budget(clock):
    model = Timed(clock, lambda n: 1.0 + 0.01 * n)  # larger is always faster
    sizes = []
    for _ in range(7):
        _score(model, 42)
        (choice,) = auto_batch_sizes(model).values()
        sizes.append(choice.size)
        assert choice.credit >= 0
    # 5.25 rows of credit per call, one timed chunk per size (each is far faster)
    assert sizes == [2, 4, 8, 8, 8, 16, 16]
    # 30 of the 294 rows went to timing sizes above 1; 32 waits for enough credit
    assert not choice.done and choice.trial == 32 and max(model.sizes) == 16


def test_a_choice_made_under_other_load_is_checked_again(clock):
    table = {1: 1.0, 2: 0.85, 4: 1.2, 8: 1.5}  # 4 looks slow while another job runs
    model = Timed(clock, lambda n: n * table[n] if n in table else n * 10.0)
    _score(model, 1000)
    assert auto_batch_sizes(model).popitem()[1].size == 2
    table[4] = 0.6  # the other job ended
    sizes = []
    for _ in range(6):
        model.sizes.clear()
        _score(model, 100)
        sizes.append(auto_batch_sizes(model).popitem()[1].size)
    # 12.5 rows of credit per call; at 16 x 2 = 32 the sizes 2 and 4 are timed again
    assert sizes == [2, 2, 4, 4, 4, 4]
    assert set(model.sizes) == {4}  # checked and done again: nothing more is timed


def test_a_second_call_reuses_the_choice_without_timing(clock):
    model = Timed(clock, _per_row({1: 1.0, 2: 0.85, 4: 0.6, 8: 0.7}))
    _score(model, 1000)
    model.sizes.clear()
    _score(model, 100)
    assert model.sizes == [4] * 25  # the first row gives the key; its chunk is already a 4


@pytest.mark.parametrize("change", ["threads", "shape", "dtype"])
def test_the_key_changes_with_threads_shape_and_dtype(clock, change):
    model = Timed(clock, _per_row({1: 1.0, 2: 0.85, 4: 0.6, 8: 0.7}), features=12)
    _score(model, 200)
    threads = torch.get_num_threads()
    model.sizes.clear()
    try:
        if change == "threads":
            torch.set_num_threads(threads + 1)
            _score(model, 200)
        elif change == "shape":
            model.net = nn.Sequential(nn.Flatten(), nn.Linear(18, 3)).double()
            _score(model, 200, width=3)
        else:
            model.net.float()
            x = torch.randn(200, 3, 2, 2)
            score_rows(
                model, as_target(1), 200, lambda rows: x[rows], torch.zeros(200).long(),
                batch_size="auto",
            )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert model.sizes[:3] == [1, 1, 1]  # tuned again from a warm-up row
    assert len(auto_batch_sizes(model)) == 2


def test_the_key_names_the_device():
    cpu = scoring._key(torch.zeros(1, 3, 4))
    meta = scoring._key(torch.zeros(1, 3, 4, device="meta"))
    assert cpu[0] == meta[0] == (3, 4) and cpu[1] == meta[1]
    assert cpu[2] != meta[2] and cpu != meta
    assert cpu[3] == torch.get_num_threads()


def test_reset_forgets_and_the_model_is_not_kept_alive(clock):
    model = Timed(clock, _per_row({1: 1.0, 2: 0.85, 4: 0.6, 8: 0.7}))
    _score(model, 1000)
    assert auto_batch_sizes(model)
    reset_auto_batch_sizes(model)
    assert auto_batch_sizes(model) == {}
    model.sizes.clear()
    _score(model, 1000)
    assert model.sizes[:3] == [1, 1, 1]  # tuned again
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None and not scoring._TUNED


def test_an_unreferenceable_callable_is_tuned_every_call(clock):
    model = Timed(clock, _per_row({1: 1.0, 2: 0.85, 4: 0.6, 8: 0.7}))

    class Head:  # a callable without weak references (slots)
        __slots__ = ()

        def __call__(self, x: Tensor) -> Tensor:
            return model(x)

    forward = Head()
    _score(forward, 1000)
    model.sizes.clear()
    _score(forward, 1000)
    assert model.sizes[:3] == [1, 1, 1]
    assert auto_batch_sizes(forward) == {}


@pytest.mark.parametrize(
    "metric",
    [Deletion(n_steps=40), Insertion(n_steps=40, baseline="blur"), PixelFlipping(2)],
    ids=lambda m: type(m).__name__,
)
def test_curves_equal_a_fixed_batch_size(clock, metric):
    model = Timed(clock, _per_row({1: 1.0, 2: 0.85, 4: 0.6, 8: 0.7}), features=3 * 8 * 8).eval()
    x = torch.randn(3, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    maps = torch.randn(3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    target = ProbabilityTarget(None)
    curves = {}
    for bs in ("auto", "auto", 1, 7):  # the first "auto" tunes, the second reuses
        metric.batch_size = bs
        curves[len(curves)] = metric(model, x, maps, target).curve
    assert auto_batch_sizes(model).popitem()[1].size == 4
    for curve in curves.values():
        torch.testing.assert_close(curve, curves[2])  # batch_size=1


def test_bad_batch_size_names_the_choices():
    with pytest.raises(ValueError, match="'auto' or None"):
        Deletion(batch_size="fast")
    assert Deletion().batch_size == "auto"
