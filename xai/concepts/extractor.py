r"""Concept extraction (CRAFT) on any model split at a layer: :class:`ConceptExtractor`.

The model is split at ``layer`` into ``g`` (input -> activations) and ``h`` (activations ->
output) with :mod:`xai.adapter.split` (hooks only, any ``nn.Module``). Activations of many
patches of images of one class, ``A`` (``n x C``), are factorized :math:`A \approx U W` (see
:mod:`xai.concepts.factorizers`); ``W`` (``K x C``) is the concept bank. A new image is encoded
position by position against the fixed bank, giving ``(K, h, w)`` coefficient maps; concept
importance (:mod:`xai.concepts.importance`) perturbs those coefficients and evaluates ``h``.

References:
    Fel et al., "CRAFT: Concept Recursive Activation FacTorization for Explainability",
    CVPR 2023. Fel et al., "A Holistic Approach to Unifying Automatic Concept Extraction and
    Concept Importance Estimation", NeurIPS 2023.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._checks import check_inputs, check_positive_int
from xai._typing import LayerLike
from xai.adapter import ModelAdapter
from xai.adapter.split import head, layer_outputs, recorder
from xai.adapter.state import preserved
from xai.adapter.targets import ClassTarget, class_indices
from xai.concepts.attribution import concept_attribution_maps
from xai.concepts.factorizers import Factorizer, make_factorizer
from xai.concepts.importance import concept_importance, masked_scores
from xai.concepts.maps import filter_maps

__all__ = ["ConceptExtractor"]

Patches = Literal["grid", "random", "positions"]


def _rows(acts: Tensor, layer: str) -> Tensor:
    """``(B, C, h, w)`` or ``(B, C)`` activations as ``(B, h, w, C)``."""
    if acts.dim() == 4:
        return acts.permute(0, 2, 3, 1)
    if acts.dim() == 2:
        return acts[:, None, None, :]
    raise ValueError(
        f"layer {layer!r} has output shape {tuple(acts.shape)}: concepts need a channel axis "
        "((B, C) vectors) or a channel and two spatial axes ((B, C, h, w)); choose a "
        "convolutional block or a pooled feature layer (see xai.adapter.list_layers)"
    )


class ConceptExtractor:
    r"""Extract ``n_concepts`` concepts of one class at a layer, then explain with them.

    Activations are collected from patches of the class images (``patches="grid"``: CRAFT's
    fixed grid of ``patch_size`` crops with stride ``int(0.8 * patch_size)``, each resized back
    to the input size and averaged over space, one row per crop; ``"random"``: ``n_patches``
    crops at uniformly random positions, seeded; ``"positions"``: no crops, every spatial
    position of every image is a row, as in the holistic paper) and factorized.

    Args:
        model: any classifier ``(B, C, H, W) -> (B, classes)``; never modified.
        layer: where to split the model (name or module). With ``factorizer="nmf"`` its
            output must be non-negative (after a ReLU/ReLU6; e.g. ``"features.18"`` of
            torchvision's MobileNetV2, ``"layer4"`` of a ResNet).
        n_concepts: ``K`` (default 10: enough for the penultimate layer of an ImageNet class,
            CRAFT section 4).
        factorizer: ``"nmf"`` (default, CRAFT), ``"pca"``, ``"ica"``, ``"kmeans"``,
            ``"dictionary"`` or an object following :class:`~xai.concepts.Factorizer`.
        patch_size: crop side in pixels (default 64 for 224 inputs, CRAFT's reference).
        patches: ``"grid"`` (default), ``"random"`` or ``"positions"``, see above.
        n_patches: number of random crops in total (``patches="random"``; default 16 per
            image, the count of the 224/64 grid).
        batch_size: forward passes at most this many inputs at a time (default 64).
        seed: seed of the random crops, the factorizer and the Sobol design (default 0).
        progress: show ``tqdm`` progress bars.

    Attributes (set by :meth:`fit`):
        concepts_: ``(K, C)`` concept bank ``W`` (float64).
        coefficients_: ``(n, K)`` coefficients ``U`` of the training rows.
        activations_: ``(n, C)`` training rows ``A``.
        patches_: ``(n, 3)`` long tensor ``(image index, top, left)`` of each crop (``-1`` for
            top/left with ``patches="positions"``; the row is then a position).
        images_: the images given to :meth:`fit` (a reference, not a copy).
        target_: the explained class.
        factorizer_: the fitted factorizer.

    Example:
        >>> ce = ConceptExtractor(model, "features.18", n_concepts=10).fit(cat_images, 281)
        >>> ce.importance()            # (10,) Sobol total indices, averaged over the images
        >>> ce.concept_maps(x)         # (B, 10, 224, 224): where each concept is
    """

    parent_: tuple[ConceptExtractor, int]  # set by the parent's refine()
    parent_rows_: Tensor

    def __init__(
        self,
        model: nn.Module,
        layer: LayerLike,
        *,
        n_concepts: int = 10,
        factorizer: str | Factorizer = "nmf",
        patch_size: int = 64,
        patches: Patches = "grid",
        n_patches: int | None = None,
        batch_size: int = 64,
        seed: int | None = 0,
        progress: bool = False,
    ) -> None:
        self.adapter = ModelAdapter(model)
        self.model = model
        self.layer, _ = self.adapter.resolve(layer)
        check_positive_int(n_concepts, "n_concepts")
        check_positive_int(patch_size, "patch_size")
        check_positive_int(batch_size, "batch_size")
        check_positive_int(n_patches, "n_patches", allow_none=True)
        if patches not in ("grid", "random", "positions"):
            raise ValueError(f"patches must be 'grid', 'random' or 'positions', got {patches!r}")
        self.n_concepts = n_concepts
        self.factorizer = factorizer
        self.patch_size = patch_size
        self.patches = patches
        self.n_patches = n_patches
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self._probe_size: tuple[int, int] | None = None
        self._input_shape: tuple[int, ...] | None = None

    # ----------------------------------------------------------------- g and h
    def activations(self, inputs: Tensor) -> Tensor:
        """``g(inputs)`` in batches: ``(B, h, w, C)`` (``h = w = 1`` for a ``(B, C)`` layer)."""
        check_inputs(inputs)
        return self._pass(inputs)[0]

    def _pass(self, inputs: Tensor, *, output: bool = False) -> tuple[Tensor, Tensor | None]:
        """``g(inputs)`` as ``(B, h, w, C)`` rows and, with ``output``, the model outputs
        (the whole model then runs, once per batch: no second pass for the prediction).
        """
        rows, outputs = [], []
        with recorder(self.model, [self.layer], output=output) as run:
            for start in range(0, inputs.shape[0], self.batch_size):
                found, out = run(inputs[start : start + self.batch_size])
                rows.append(_rows(found[self.layer], self.layer))
                if out is not None:
                    outputs.append(out)
        return torch.cat(rows), torch.cat(outputs) if output else None

    def head(self, activations: Tensor) -> Tensor:
        """``h(activations)``: model outputs ``(n, classes)`` for ``(n, h, w, C)`` activations.

        Runs the model on a small zero probe while the layer's output is replaced (see
        :func:`xai.adapter.split.head`); differentiable w.r.t. ``activations``. Call inside
        :func:`xai.adapter.preserved` (the importance methods do).
        """
        if self._input_shape is None:
            raise RuntimeError("the extractor is not fitted: call fit() first")
        acts = activations.permute(0, 3, 1, 2)
        if self._layer_dim == 2:
            acts = acts.flatten(1)
        c = self._input_shape[1]
        size = self._probe_size or tuple(self._input_shape[2:])
        # One probe image for the whole batch: the part before the layer costs one tiny
        # forward; _choose_probe checked that nothing after the layer mixes the probe in.
        probe = torch.zeros(1, c, *size, dtype=self._input_dtype, device=acts.device)
        return head(self.model, self.layer, acts, probe)

    def _choose_probe(self, acts: Tensor, expected: Tensor) -> None:
        """Pick the smallest probe input (one image of side 1, 8, 32 or the input size) for
        which ``h(g(x)) == model(x)`` on two images (``acts``: their ``(2, h, w, C)`` rows,
        ``expected``: their model outputs); fail if none does.
        """
        with preserved(self.model), torch.no_grad():
            for size in ((1, 1), (8, 8), (32, 32), None):
                self._probe_size = size
                try:
                    got = self.head(acts)
                except (RuntimeError, ValueError):
                    continue
                if got.shape == expected.shape and torch.allclose(
                    got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()) + 1e-6
                ):
                    return
        raise ValueError(
            f"the model does not factor through layer {self.layer!r}: its output also depends "
            "on the input through another path (a skip connection around the layer?); choose "
            "a layer that every path to the output goes through (e.g. the last block)"
        )

    # ----------------------------------------------------------------- fit
    def _boxes(self, n_images: int, height: int, width: int) -> Tensor:
        p = self.patch_size
        if p > min(height, width):
            raise ValueError(
                f"patch_size={p} is larger than the images ({height}x{width}); use a smaller "
                "patch_size"
            )
        if self.patches == "grid":
            stride = max(1, int(0.8 * p))
            rows = range(0, height - p + 1, stride)
            cols = range(0, width - p + 1, stride)
            boxes = [(i, t, le) for i in range(n_images) for t in rows for le in cols]
            return torch.tensor(boxes, dtype=torch.long)
        n = self.n_patches or 16 * n_images
        gen = torch.Generator().manual_seed(0 if self.seed is None else int(self.seed))
        idx = torch.arange(n) % n_images
        tops = torch.randint(0, height - p + 1, (n,), generator=gen)
        lefts = torch.randint(0, width - p + 1, (n,), generator=gen)
        return torch.stack([idx, tops, lefts], 1)

    def crops(self, boxes: Tensor | None = None, images: Tensor | None = None) -> Tensor:
        """The crops of ``boxes`` (default :attr:`patches_`) resized to the input size,
        ``(n, C, H, W)`` (bilinear, as the CRAFT reference).
        """
        boxes = self.patches_ if boxes is None else boxes
        images = self.images_ if images is None else images
        p = self.patch_size
        size = tuple(images.shape[2:])
        out = [images[i, :, t : t + p, le : le + p] for i, t, le in boxes.tolist()]
        if not out:
            return images[:0]
        return F.interpolate(torch.stack(out), size=size, mode="bilinear", align_corners=False)

    def _collect(self, inputs: Tensor, *, predict: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """The ``(n, C)`` rows, their ``(n, 3)`` boxes and, when ``predict`` and the rows are
        positions (the whole model then runs on the images anyway), the model outputs.
        """
        from tqdm.auto import tqdm

        b, _, height, width = inputs.shape
        if self.patches == "positions":
            acts, outputs = self._pass(inputs, output=predict)
            _, h, w, c = acts.shape
            boxes = torch.stack(
                [
                    torch.arange(b).repeat_interleave(h * w),
                    torch.full((b * h * w,), -1),
                    torch.full((b * h * w,), -1),
                ],
                1,
            )
            return acts.reshape(-1, c), boxes, outputs
        boxes = self._boxes(b, height, width)
        rows = []
        starts = range(0, len(boxes), self.batch_size)
        with recorder(self.model, [self.layer]) as run:  # hooked once for every batch
            for start in tqdm(starts, desc="Activations", disable=not self.progress):
                found, _ = run(self.crops(boxes[start : start + self.batch_size], inputs))
                rows.append(_rows(found[self.layer], self.layer).mean((1, 2)))
        return torch.cat(rows), boxes, None

    def _next_nonnegative_layer(self) -> str | None:
        """The first ReLU-like module registered after the layer (a suggestion for NMF)."""
        names = [n for n, _ in self.adapter.module.named_modules()]
        after = names[names.index(self.layer) + 1 :] if self.layer in names else []
        modules = dict(self.adapter.module.named_modules())
        kinds = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid)
        return next((n for n in after if isinstance(modules[n], kinds)), None)

    def _check_activations(self, acts: Tensor, factorizer: Factorizer) -> None:
        if getattr(factorizer, "requires_nonnegative", False) and bool((acts < 0).any()):
            candidate = self._next_nonnegative_layer()
            hint = f"e.g. layer={candidate!r}, " if candidate else ""
            raise ValueError(
                f"layer {self.layer!r} has negative activations (min {float(acts.min()):.3g}), "
                f"which NMF cannot factorize; use the output of a ReLU/ReLU6 ({hint}the end of "
                "a block: 'features.18' for MobileNetV2, 'layer4' for a ResNet) or "
                "factorizer='pca'/'ica'/'dictionary'"
            )
        if acts.shape[0] < self.n_concepts:
            raise ValueError(
                f"only {acts.shape[0]} activation rows for n_concepts={self.n_concepts}: use "
                "fewer concepts, more images, more patches (n_patches, patches='random') or "
                "patches='positions'"
            )

    @staticmethod
    def _target_index(target: object) -> int:
        index = class_indices(target, "target")
        if not isinstance(index, int):
            raise TypeError(
                f"target must be one class index (an int), got {type(target).__name__} of "
                f"shape {tuple(index.shape)}; a ConceptExtractor explains one class"
            )
        return index

    def _predicted_class(self, inputs: Tensor, outputs: Tensor | None) -> int:
        """The most frequent predicted class of ``inputs`` (``outputs``: their model outputs
        when already computed, batch by batch as here).
        """
        if outputs is None:
            with preserved(self.model), torch.no_grad():
                outputs = torch.cat(
                    [
                        self.adapter.forward(inputs[s : s + self.batch_size])
                        for s in range(0, inputs.shape[0], self.batch_size)
                    ]
                )
        return Counter(int(c) for c in outputs.argmax(-1)).most_common(1)[0][0]

    def fit(self, inputs: Tensor, target: int | None = None) -> ConceptExtractor:
        """Collect activations of patches of ``inputs`` (images of one class) and factorize.

        Args:
            inputs: ``(B, C, H, W)`` images of the class (model-ready, e.g. normalized).
            target: the class explained by :meth:`importance`; ``None`` takes the most
                frequent predicted class of ``inputs``.

        Returns:
            ``self``.

        Raises:
            TypeError: a ``target`` that is not one integer class index.
            ValueError: NaN/Inf inputs, a ``target`` out of range (negative indices are
                refused, not counted from the end), negative activations with NMF, fewer rows
                than concepts, a layer without channel axis, a patch larger than the images, a
                model that does not factor through the layer.
        """
        check_inputs(inputs)
        index = None if target is None else self._target_index(target)
        factorizer = make_factorizer(self.factorizer, self.n_concepts, self.seed)
        self._input_shape = tuple(inputs.shape)
        self._input_dtype = inputs.dtype
        # One whole forward of two images serves every check, before the long collection:
        # the target's range, the layer's channel axis, and h(g(x)) == model(x).
        found, outputs = layer_outputs(self.model, [self.layer], inputs[:2], output=True)
        assert outputs is not None  # output=True
        if index is not None:
            ClassTarget(index).indices(outputs)  # the range check, with the library's message
        first = _rows(found[self.layer], self.layer)  # the channel-axis check
        self._layer_dim = found[self.layer].dim()
        self._choose_probe(first, outputs)
        acts, boxes, predicted = self._collect(inputs, predict=index is None)
        self._check_activations(acts, factorizer)
        coefficients = factorizer.fit(acts)
        if index is None:
            # the two checked images are the first (and only) prediction batch when b <= 2
            if predicted is None and inputs.shape[0] <= min(2, self.batch_size):
                predicted = outputs
            index = self._predicted_class(inputs, predicted)
        self.target_ = index
        self.factorizer_ = factorizer
        self.concepts_ = factorizer.components
        self.coefficients_ = coefficients
        self.activations_ = acts
        self.patches_ = boxes
        self.images_ = inputs
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "factorizer_"):
            raise RuntimeError("the extractor is not fitted: call fit(images_of_a_class) first")

    # ----------------------------------------------------------------- encode
    def encode(self, inputs: Tensor) -> Tensor:
        """Per-position concept coefficients ``(B, h, w, K)`` (the bank fixed)."""
        self._check_fitted()
        acts = self.activations(inputs)
        b, h, w, c = acts.shape
        return self.factorizer_.encode(acts.reshape(-1, c)).reshape(b, h, w, -1)

    def transform(self, inputs: Tensor) -> Tensor:
        """Concept coefficients at each position of the layer, ``(B, K, h, w)``."""
        return self.encode(inputs).permute(0, 3, 1, 2)

    def concept_maps(
        self,
        inputs: Tensor,
        *,
        percentile: float | None = None,
        order: Literal["upsample", "threshold"] = "upsample",
    ) -> Tensor:
        """Where each concept is: coefficient maps at the input size, ``(B, K, H, W)``.

        Args:
            inputs: ``(B, C, H, W)``.
            percentile: ``None`` (default): raw coefficients upsampled bilinearly. A number in
                ``[0, 100]``: keep only the values above that percentile of each map (CRAFT's
                display uses 90), the rest set to 0.
            order: with a percentile, ``"upsample"`` (default) upsamples and then thresholds
                (crisp region borders); ``"threshold"`` thresholds at the layer's resolution
                and then upsamples, as the CRAFT reference notebook does (soft borders).

        Raises:
            ValueError: an unknown ``order`` or a percentile outside ``[0, 100]``.
        """
        if order not in ("upsample", "threshold"):
            raise ValueError(f"order must be 'upsample' or 'threshold', got {order!r}")
        coeffs = self.transform(inputs)
        coeffs = coeffs.to(torch.promote_types(coeffs.dtype, torch.float32))
        if percentile is not None and order == "threshold":
            coeffs = filter_maps(coeffs, percentile=percentile)
        maps = F.interpolate(
            coeffs, size=tuple(inputs.shape[2:]), mode="bilinear", align_corners=False
        )
        if percentile is not None and order == "upsample":
            maps = filter_maps(maps, percentile=percentile)
        return maps

    def concept_attribution_maps(
        self,
        inputs: Tensor,
        concepts: list[int] | None = None,
        *,
        method: str = "gradient_input",
    ) -> Tensor:
        """Pixel attribution of each concept's coefficient by implicit differentiation
        through the NNLS encoding, ``(B, len(concepts), H, W)``; see
        :func:`xai.concepts.attribution.concept_attribution_maps`.
        """
        return concept_attribution_maps(self, inputs, concepts, method=method)

    def refine(
        self,
        concept: int,
        layer: LayerLike,
        *,
        n_concepts: int = 4,
        top_fraction: float = 0.1,
        **kwargs: object,
    ) -> ConceptExtractor:
        """CRAFT's recursion: split one concept into sub-concepts at an earlier layer.

        The crops that express ``concept`` most (the top ``top_fraction`` of the training
        rows by its coefficient, at least ``n_concepts`` of them) are taken as images, and a
        new extractor is fitted on them at ``layer`` (crops are used whole there:
        ``patches="positions"`` unless ``kwargs`` says otherwise). Fel et al. describe the
        recursion without a criterion for when to apply it; no reference code implements it.

        Args:
            concept: index of the concept to split.
            layer: an earlier layer of the same model.
            n_concepts: number of sub-concepts (default 4).
            top_fraction: share of the training rows kept (default 0.1).
            **kwargs: further :class:`ConceptExtractor` options for the child.

        Returns:
            The fitted child extractor; ``child.parent_ == (self, concept)``.

        Raises:
            ValueError: ``concept`` out of range, ``top_fraction`` outside ``(0, 1]``, or the
                extractor was fitted with ``patches="positions"`` (rows are not crops).
        """
        self._check_fitted()
        k = self.concepts_.shape[0]
        if not (isinstance(concept, int) and 0 <= concept < k):
            raise ValueError(f"concept must be an int in 0..{k - 1}, got {concept!r}")
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        if self.patches == "positions":
            raise ValueError("refine() needs crops: fit the parent with patches='grid' or 'random'")
        n_rows = self.coefficients_.shape[0]
        n_top = min(n_rows, max(n_concepts, round(top_fraction * n_rows)))
        top = self.coefficients_[:, concept].topk(n_top).indices
        crops = self.crops(self.patches_[top])
        options: dict[str, object] = {
            "n_concepts": n_concepts,
            "patches": "positions",
            "factorizer": self.factorizer if isinstance(self.factorizer, str) else "nmf",
            "batch_size": self.batch_size,
            "seed": self.seed,
            "progress": self.progress,
            "patch_size": self.patch_size,
        }
        options.update(kwargs)
        child = ConceptExtractor(self.model, layer, **options)  # type: ignore[arg-type]
        child.fit(crops, self.target_)
        child.parent_ = (self, concept)
        child.parent_rows_ = top
        return child

    # ----------------------------------------------------------------- importance
    def importance(
        self,
        inputs: Tensor | None = None,
        *,
        method: str = "sobol",
        **kwargs: object,
    ) -> Tensor:
        """Global importance of each concept for :attr:`target_`: the mean over ``inputs``
        (default the images given to :meth:`fit`) of :meth:`local_importance`, ``(K,)``.

        ``method`` and ``kwargs``: see :func:`xai.concepts.importance.concept_importance`
        (default ``"sobol"``: total Sobol indices, CRAFT).
        """
        return self.local_importance(inputs, method=method, **kwargs).mean(0)

    def local_importance(
        self,
        inputs: Tensor | None = None,
        *,
        method: str = "sobol",
        **kwargs: object,
    ) -> Tensor:
        """Per-image importance of each concept, ``(B, K)``; see :meth:`importance`."""
        self._check_fitted()
        inputs = self.images_ if inputs is None else inputs
        coefficients = self.encode(inputs)
        with preserved(self.model):
            return concept_importance(
                self.concept_score,
                coefficients,
                method=method,
                batch_size=self.batch_size,
                seed=self.seed,
                **kwargs,  # type: ignore[arg-type]
            )

    def concept_score(self, coefficients: Tensor) -> Tensor:
        """Score of :attr:`target_` for concept coefficients: ``h(u W)``, ``(n,)``.

        The concept-space model that the importance methods perturb
        (:data:`xai.concepts.importance.ConceptScore`); differentiable w.r.t. ``coefficients``.
        Call inside :func:`xai.adapter.preserved` (:meth:`local_importance` and :meth:`scores`
        do).

        Args:
            coefficients: ``(n, h, w, K)`` (masked) per-position coefficients.
        """
        self._check_fitted()
        return self.head(self.factorizer_.decode(coefficients))[:, self.target_]

    def scores(self, coefficients: Tensor, masks: Tensor) -> Tensor:
        """Class score ``h((u ⊙ m) W)`` for every mask and image, ``(n_masks, B)``.

        Args:
            coefficients: ``(B, h, w, K)`` from :meth:`encode`.
            masks: ``(n_masks, K)``; a mask value multiplies concept ``k`` at every position.
        """
        with preserved(self.model):
            return masked_scores(
                self.concept_score, coefficients, masks, batch_size=self.batch_size
            )
