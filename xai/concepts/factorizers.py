r"""Concept extractors: dictionary learning :math:`A \approx U W` on activations.

``A`` is ``(n, C)`` (one activation vector per row), ``U`` the ``(n, K)`` concept coefficients
and ``W`` the ``(K, C)`` concept bank. Each factorizer is a thin wrapper over scikit-learn
(the unifying view of Fel et al., "A Holistic Approach to Unifying Automatic Concept
Extraction and Concept Importance Estimation", NeurIPS 2023, table 1):

=====================  ==============================================  =====================
name                   model                                           encoding of new ``a``
=====================  ==============================================  =====================
``"nmf"``              ``U, W >= 0`` (CRAFT, ICE)                       NNLS with ``W`` fixed
``"pca"``              orthonormal ``W``, centered ``A``                ``(a - mean) W^T``
``"ica"``              independent codes (FastICA)                      unmixing matrix
``"kmeans"``           ``U`` one-hot (cluster centroids)                nearest centroid
``"dictionary"``       sparse ``U`` (L1; DictionaryLearning)            Lasso (LARS)
=====================  ==============================================  =====================

Decoding is ``U W`` (plus the mean for PCA and ICA), so "removing" a concept (coefficient 0)
means "back to the mean" for the centered methods.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FACTORIZERS",
    "DictionaryFactorizer",
    "Factorizer",
    "ICAFactorizer",
    "KMeansFactorizer",
    "NMFFactorizer",
    "PCAFactorizer",
    "make_factorizer",
]


@runtime_checkable
class Factorizer(Protocol):
    """What :class:`~xai.concepts.ConceptExtractor` needs from a concept extractor.

    Attributes:
        requires_nonnegative: activations must be ``>= 0`` (NMF).
        components: ``(K, C)`` concept bank ``W``, set by :meth:`fit`.
    """

    requires_nonnegative: bool
    components: Tensor

    def fit(self, activations: Tensor) -> Tensor:
        """Learn ``W`` from ``(n, C)`` activations; return their ``(n, K)`` coefficients."""
        ...

    def encode(self, activations: Tensor) -> Tensor:
        """``(n, C)`` activations -> ``(n, K)`` coefficients with the bank fixed."""
        ...

    def decode(self, coefficients: Tensor) -> Tensor:
        """``(..., K)`` coefficients -> ``(..., C)`` activations (differentiable, torch)."""
        ...


class _SklearnFactorizer:
    """Common plumbing: torch <-> NumPy (float64), the fitted estimator in ``estimator_``."""

    requires_nonnegative = False

    def __init__(self, n_concepts: int, *, seed: int | None = 0, **kwargs: object) -> None:
        self.n_concepts = n_concepts
        self.seed = seed
        self.kwargs = kwargs
        self.estimator_: Any = None  # a fitted scikit-learn estimator (untyped)
        self.components = torch.empty(0)
        self.mean = torch.empty(0)

    def _make(self):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _np(x: Tensor) -> np.ndarray:
        return x.detach().to("cpu", torch.float64).numpy()

    def _check_fitted(self) -> None:
        if self.estimator_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() first")

    def fit(self, activations: Tensor) -> Tensor:
        est = self._make()
        codes = est.fit_transform(self._np(activations))
        self.estimator_ = est
        self._set_bank(est)
        return torch.as_tensor(np.asarray(codes), dtype=activations.dtype)

    def _set_bank(self, est: Any) -> None:
        self.components = torch.as_tensor(np.asarray(est.components_), dtype=torch.float64)
        mean = getattr(est, "mean_", None)
        self.mean = (
            torch.zeros(self.components.shape[1], dtype=torch.float64)
            if mean is None
            else torch.as_tensor(np.asarray(mean), dtype=torch.float64)
        )

    def encode(self, activations: Tensor) -> Tensor:
        self._check_fitted()
        codes = self.estimator_.transform(self._np(activations))
        return torch.as_tensor(np.asarray(codes), dtype=activations.dtype)

    def decode(self, coefficients: Tensor) -> Tensor:
        self._check_fitted()
        bank = self.components.to(coefficients)
        return coefficients @ bank + self.mean.to(coefficients)


class NMFFactorizer(_SklearnFactorizer):
    """Non-negative matrix factorization (``sklearn.decomposition.NMF``), CRAFT's choice.

    Defaults are scikit-learn's (the PyTorch CRAFT reference uses them; the TF reference adds
    ``alpha_W=1e-2``) except ``max_iter=500`` (sklearn: 200) so that 10-25 concepts converge
    on a few thousand rows; any keyword is passed to ``NMF``. New activations are encoded by
    ``NMF.transform`` (non-negative least squares with the bank fixed).
    """

    requires_nonnegative = True

    def _make(self):
        from sklearn.decomposition import NMF

        kw = {"max_iter": 500, **self.kwargs}
        return NMF(n_components=self.n_concepts, random_state=self.seed, **kw)


class PCAFactorizer(_SklearnFactorizer):
    """Principal component analysis (``sklearn.decomposition.PCA``); codes of centered rows."""

    def _make(self):
        from sklearn.decomposition import PCA

        return PCA(n_components=self.n_concepts, random_state=self.seed, **self.kwargs)


class ICAFactorizer(_SklearnFactorizer):
    """Independent component analysis (``sklearn.decomposition.FastICA``, unit-variance
    whitening). The bank is the mixing matrix (``mixing_.T``), so ``decode(encode(a))``
    reconstructs ``a`` within the ``K``-dimensional subspace.
    """

    def _make(self):
        from sklearn.decomposition import FastICA

        kw = {"whiten": "unit-variance", "max_iter": 1000, **self.kwargs}
        return FastICA(n_components=self.n_concepts, random_state=self.seed, **kw)

    def _set_bank(self, est: Any) -> None:
        self.components = torch.as_tensor(np.asarray(est.mixing_).T, dtype=torch.float64)
        self.mean = torch.as_tensor(np.asarray(est.mean_), dtype=torch.float64)


class KMeansFactorizer(_SklearnFactorizer):
    """K-means (``sklearn.cluster.KMeans``): ``U`` is the one-hot nearest centroid, the bank
    the ``K`` centroids (the prototype / cluster-based concept methods).
    """

    def _make(self):
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=self.n_concepts, random_state=self.seed, n_init=4, **self.kwargs)

    def _one_hot(self, labels: np.ndarray, dtype: torch.dtype) -> Tensor:
        idx = torch.as_tensor(labels, dtype=torch.long)
        return torch.nn.functional.one_hot(idx, self.n_concepts).to(dtype)

    def fit(self, activations: Tensor) -> Tensor:
        """Cluster ``(n, C)`` activations; return their ``(n, K)`` one-hot assignments."""
        est = self._make()
        labels = est.fit_predict(self._np(activations))
        self.estimator_ = est
        self.components = torch.as_tensor(est.cluster_centers_, dtype=torch.float64)
        self.mean = torch.zeros(self.components.shape[1], dtype=torch.float64)
        return self._one_hot(labels, activations.dtype)

    def encode(self, activations: Tensor) -> Tensor:
        """``(n, C)`` activations -> ``(n, K)`` one-hot nearest centroids."""
        self._check_fitted()
        labels = self.estimator_.predict(self._np(activations))
        return self._one_hot(labels, activations.dtype)


class DictionaryFactorizer(_SklearnFactorizer):
    """Sparse dictionary learning (``sklearn.decomposition.DictionaryLearning``): an L1
    penalty ``alpha`` (default 1, sklearn's) on the codes; codes by Lasso (LARS) for fit and
    transform alike.
    """

    def _make(self):
        from sklearn.decomposition import DictionaryLearning

        kw = {
            "fit_algorithm": "cd",
            "transform_algorithm": "lasso_lars",
            "max_iter": 200,
            **self.kwargs,
        }
        return DictionaryLearning(n_components=self.n_concepts, random_state=self.seed, **kw)


FACTORIZERS: dict[str, type] = {
    "nmf": NMFFactorizer,
    "pca": PCAFactorizer,
    "ica": ICAFactorizer,
    "kmeans": KMeansFactorizer,
    "dictionary": DictionaryFactorizer,
}
"""Built-in factorizers by name."""


def make_factorizer(factorizer: str | Factorizer, n_concepts: int, seed: int | None) -> Factorizer:
    """A factorizer from a name of :data:`FACTORIZERS` or an object following the protocol.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
        TypeError: an object missing ``fit``/``encode``/``decode``.
    """
    if isinstance(factorizer, str):
        if factorizer not in FACTORIZERS:
            raise ValueError(
                f"unknown factorizer {factorizer!r}; valid: {', '.join(map(repr, FACTORIZERS))}"
                " or an object with fit/encode/decode (see xai.concepts.Factorizer)"
            )
        return FACTORIZERS[factorizer](n_concepts, seed=seed)
    if all(callable(getattr(factorizer, m, None)) for m in ("fit", "encode", "decode")):
        return factorizer
    raise TypeError(
        f"factorizer must be a name or an object with fit/encode/decode methods, got "
        f"{type(factorizer).__name__}"
    )
