"""The sklearn-backed factorizers recover planted structure; metrics of extraction."""

from __future__ import annotations

import pytest
import torch

from tests.concepts._planted import planted_bank
from xai.concepts import (
    DictionaryFactorizer,
    Factorizer,
    ICAFactorizer,
    KMeansFactorizer,
    NMFFactorizer,
    PCAFactorizer,
    match_concepts,
    relative_reconstruction_error,
    sparsity,
    stability,
)


def _abs_matched(bank, found):
    # PCA / ICA directions are defined up to sign: match |cos| on both signs.
    both = torch.cat([found, -found])
    _, cos = match_concepts(bank, both)
    return cos


def test_nmf_on_planted_nonnegative_data():
    bank = planted_bank(k=5, channels=20, seed=2)
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(400, 5, generator=gen, dtype=torch.float64) * (
        torch.rand(400, 5, generator=gen) < 0.4
    )
    a = u @ bank
    f = NMFFactorizer(5, seed=0)
    codes = f.fit(a)
    assert isinstance(f, Factorizer)
    assert float(match_concepts(bank, f.components)[1].min()) >= 0.95
    assert relative_reconstruction_error(a, codes, f.components) < 0.02
    assert bool((codes >= 0).all()) and bool((f.encode(a) >= 0).all())
    torch.testing.assert_close(f.decode(f.encode(a)), a, atol=0.05, rtol=0)


def test_pca_recovers_orthogonal_directions_with_distinct_variances():
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(12, 3, generator=gen, dtype=torch.float64))
    scales = torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64)
    a = (torch.randn(500, 3, generator=gen, dtype=torch.float64) * scales) @ q.T + 2.0
    f = PCAFactorizer(3)
    codes = f.fit(a)
    assert float(_abs_matched(q.T, f.components).min()) >= 0.99
    # decode adds the mean back: exact reconstruction of rank-3 data
    torch.testing.assert_close(f.decode(codes), a, atol=1e-8, rtol=0)
    assert relative_reconstruction_error(a, codes, f.components, f.mean) < 1e-8


def test_ica_recovers_the_mixing_of_independent_sources():
    gen = torch.Generator().manual_seed(2)
    sources = torch.rand(2000, 3, generator=gen, dtype=torch.float64) - 0.5  # non-Gaussian
    mixing = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    a = sources @ mixing
    f = ICAFactorizer(3)
    codes = f.fit(a)
    assert float(_abs_matched(mixing, f.components).min()) >= 0.99
    torch.testing.assert_close(f.decode(codes), a, atol=1e-6, rtol=0)


def test_kmeans_codes_are_one_hot_and_centroids_found():
    centers = planted_bank(k=3, channels=8, seed=4) * 10
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (300,), generator=gen)
    a = centers[labels] + 0.01 * torch.randn(300, 8, generator=gen, dtype=torch.float64)
    f = KMeansFactorizer(3)
    codes = f.fit(a)
    assert bool(((codes == 0) | (codes == 1)).all()) and bool((codes.sum(1) == 1).all())
    idx, cos = match_concepts(centers, f.components)
    assert float(cos.min()) > 0.999
    torch.testing.assert_close(f.components[idx], centers, atol=0.01, rtol=0)


def test_dictionary_learning_gives_sparse_codes():
    bank = planted_bank(k=4, channels=16, seed=5)
    gen = torch.Generator().manual_seed(5)
    u = torch.rand(200, 4, generator=gen, dtype=torch.float64) * (
        torch.rand(200, 4, generator=gen) < 0.3
    )
    a = u @ bank
    f = DictionaryFactorizer(4, alpha=0.01)
    codes = f.fit(a)
    assert sparsity(codes) > 0.4
    assert relative_reconstruction_error(a, codes, f.components) < 0.1


def test_stability_and_sparsity_metrics():
    bank = planted_bank(k=4, channels=16)
    perm = torch.tensor([2, 0, 3, 1])
    assert stability(bank, bank[perm]) == pytest.approx(1.0)
    idx, _ = match_concepts(bank, bank[perm])
    torch.testing.assert_close(bank[perm][idx], bank)
    assert sparsity(torch.tensor([[0.0, 1.0], [0.0, 0.0]])) == pytest.approx(0.75)
    gen = torch.Generator().manual_seed(0)
    random_bank = torch.rand(4, 16, generator=gen, dtype=torch.float64)
    assert stability(bank, random_bank) < 0.95
