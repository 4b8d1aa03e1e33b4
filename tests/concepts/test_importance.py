"""Concept importance on a bare score function (no extractor): closed forms of a linear score."""

from __future__ import annotations

import pytest
import torch

from xai.concepts.importance import concept_importance, masked_scores

K = 3


def linear_score():
    """``F(u) = sum over positions of u . c + b``: every method's exact answer is ``S_k c_k``."""
    c = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    return (lambda u: u.sum((1, 2)) @ c + 0.25), c


def coefficients() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(4, 2, 3, K, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("method", ["gradient_input", "integrated_gradients", "occlusion"])
def test_additive_methods_give_the_exact_contributions(method):
    score, c = linear_score()
    u = coefficients()
    exact = u.sum((1, 2)) * c  # (B, K)
    with torch.no_grad():  # the gradient methods enable gradients themselves
        got = concept_importance(score, u, method=method, batch_size=3, n_steps=4)
    torch.testing.assert_close(got, exact, rtol=1e-12, atol=1e-12)


def test_masked_scores_match_the_closed_form_for_any_batch_size():
    score, c = linear_score()
    u = coefficients()
    masks = torch.rand(5, K, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = masks @ (u.sum((1, 2)) * c).T + 0.25  # (n_masks, B)
    for size in (1, 2, 64):
        torch.testing.assert_close(masked_scores(score, u, masks, batch_size=size), exact)


def test_sobol_total_indices_of_a_linear_score_are_its_normalized_squares():
    score, c = linear_score()
    u = coefficients()[:1]
    got = concept_importance(score, u, method="sobol", n_designs=1024, seed=3, batch_size=8192)
    squares = (u.sum((1, 2)) * c) ** 2  # additive F, uniform m: S_T = a_k^2 / sum_j a_j^2
    torch.testing.assert_close(got, squares / squares.sum(), atol=1e-3, rtol=0)


def test_bad_batch_size_and_method_are_errors():
    score, _ = linear_score()
    u = coefficients()
    with pytest.raises(ValueError, match="batch_size"):
        concept_importance(score, u, method="occlusion", batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        masked_scores(score, u, torch.ones(1, K), batch_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown importance method"):
        concept_importance(score, u, method="saliency")
