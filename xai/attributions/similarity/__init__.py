r"""Similarity maps for embedding networks (Stylianou, Souvenir & Pless, WACV 2019).

An embedding network maps an image to a vector :math:`e = \mathrm{head}(\mathrm{pool}(A))`, where
:math:`A \in \mathbb{R}^{C \times h \times w}` is the output of its last convolutional layer
(locations :math:`u = 1..N`, :math:`N = hw`) and ``head`` is nothing or one ``nn.Linear``.
For the pooling operators of retrieval networks, the embedding is a sum of per-location terms,

.. math:: e = \sum_u \psi_u, \qquad \psi_u = W (\omega_u \odot A_u) + b / N,

with pooling weights :math:`\omega_u \in \mathbb{R}^C`. The similarity of two images is then a
sum over the locations of either image, which gives one heatmap per image:

.. math::
    s = \frac{e_a \cdot e_b}{Z} = \sum_u H_a(u) = \sum_v H_b(v), \qquad
    H_a(u) = \frac{\psi^a_u \cdot e_b}{Z}, \quad H_b(v) = \frac{\psi^b_v \cdot e_a}{Z},

:math:`Z = 1` for the dot product and :math:`Z = \lVert e_a\rVert \lVert e_b\rVert` for the cosine.
The full table :math:`P(u, v) = \psi^a_u \cdot \psi^b_v / Z` (:meth:`SimilarityMaps.pair_table`)
shows which location of ``a`` matches which location of ``b``; its row sums are :math:`H_a` and its
column sums :math:`H_b`.

What decomposes, and how (``pooling=``):

* ``"avg"`` (global average pooling), :math:`\omega_u = 1/N`: **exact and linear**. Each term
  is the bilinear expansion of the dot product, as in the paper and its reference code
  (``compute_spatial_similarity``, which builds the :math:`N \times N` table; here the maps
  cost :math:`O(NC)`).
* ``"sum"`` (SPoC), :math:`\omega_u = 1`: exact, as ``"avg"``.
* ``"max"`` (MAC), :math:`\omega_u[c] = 1[u = \arg\max_{u'} A_{u'c}]`: the paper's max-pooling
  rule. Each channel's term :math:`e_a[c] e_b[c] / Z` lands at that channel's arg-max location
  (ties split evenly, e.g. ReLU6 saturation). The maps sum exactly to ``s``; they are sparse
  (at most ``C`` non-zero locations).
* ``"gem"`` (generalized mean, Radenović et al. 2018, ``p=3`` and ``eps=1e-6`` as in their
  code), :math:`f_c = (\frac{1}{N}\sum_u \tilde A_{uc}^p)^{1/p}` with
  :math:`\tilde A = \max(A, \epsilon)`: channel ``c``'s pooled value is credited to the
  locations in proportion to :math:`\tilde A_{uc}^p`, i.e.
  :math:`\omega_u[c] A_{uc} = f_c \tilde A_{uc}^p / \sum_{u'} \tilde A_{u'c}^p`. The maps still
  sum exactly to ``s`` (completeness), but GeM is not linear in the locations, so this split is
  an **approximation** of each location's role (removing a location does not lower ``s`` by
  its credit). ``p = 1`` gives ``"avg"`` (for non-negative features) and ``p -> inf`` tends to
  ``"max"``.
* ``"grad_cam"``: no assumption on the pooling or the head (attention pooling, MLP heads,
  ViTs ...). The maps are Grad-CAM (:class:`~xai.attributions.cam.GradCAM`) of the similarity to
  the other image's embedding (:class:`xai.adapter.SimilarityTarget`); they do **not** sum to
  ``s``. With average pooling, no head and ``metric="dot"`` they equal ``ReLU(H)``.

For the decomposable poolings the class checks, on every forward, that the model's output is
the embedding it decomposes (``head(pool(A))``; for ``"cosine"``, up to a positive scale, so an
L2-normalizing model is fine) and raises a ``ValueError`` otherwise, so a wrong ``pooling`` or
``head`` cannot give silently wrong maps.

References:
    Stylianou, Souvenir & Pless, "Visualizing Deep Similarity Networks", WACV 2019
    (arXiv 1901.00536). Radenović, Tolias & Chum, "Fine-tuning CNN Image Retrieval with No
    Human Annotation", TPAMI 2018 (GeM).

Modules: :mod:`~xai.attributions.similarity.pooling` (one strategy class per ``pooling=``),
:mod:`~xai.attributions.similarity.embedder` (forward passes, terms, scores),
:mod:`~xai.attributions.similarity.maps` (:class:`SimilarityMaps`) and
:mod:`~xai.attributions.similarity.search` (sub-region retrieval, :class:`SearchResult`).
"""

from xai.attributions.similarity.maps import SimilarityExplanation, SimilarityMaps
from xai.attributions.similarity.search import SearchResult, region_weights

__all__ = ["SearchResult", "SimilarityExplanation", "SimilarityMaps", "region_weights"]
