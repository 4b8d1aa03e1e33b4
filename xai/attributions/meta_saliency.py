"""Meta-saliency (Rebuffi et al., CVPR 2020): explain the model after one SGD step.

Wraps any method (:class:`~xai.attributions.wrappers.WrappedAttribution`) to make it more
class-sensitive; see :class:`MetaSaliency`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from xai._typing import LayerLike
from xai.adapter import Target, freeze
from xai.attributions.base import Attribution, register
from xai.attributions.normgrad import NormGrad, _check_choice
from xai.attributions.wrappers import WrappedAttribution

__all__ = ["MetaSaliency"]


@register
class MetaSaliency(WrappedAttribution[Attribution]):
    r"""Meta-saliency: explain the model after one SGD step towards the target class.

    For each sample: copy the model (a deep copy, made once per call; the user's model is never
    touched), put the copy in eval mode, take one plain SGD step (no momentum, no weight decay)
    with learning rate ``lr`` on the loss of that sample's target, compute the wrapped
    method's map on the updated copy, and reset the copy's parameters for the next sample.
    Samples are processed one at a time, so the map of a sample does not depend on the rest of
    the batch. Makes any saliency method more class-sensitive (Rebuffi et al., CVPR 2020).

    Args:
        method: the saliency method to wrap (any :class:`~xai.attributions.base.Attribution`);
            it is re-bound to the copy with :meth:`Attribution.rebind`.
        lr: the SGD learning rate; default ``0.0025``, the value of the authors' experiments
            (their function's own default is ``1e-4``).
        loss: ``"cross_entropy"`` (default, the paper): :math:`\log\sum_k e^{o_k} - y`, which
            is the cross-entropy of the target class when the target is a class (or a callable
            returning a logit); needs ``(B, n_classes)`` outputs. ``"score"``: :math:`-y`
            (any target, e.g. segmentation).
        ascent: take a gradient-ascent step instead ("what would make it not this class",
            the authors' ``negate_loss``); default ``False``.
        **kwargs: ``batch_size``, ``seed``, ``progress`` (see :class:`Attribution`).

    Returns:
        the wrapped method's ``(B, H, W)`` maps on the updated model.

    References:
        Rebuffi, Fong, Ji, Vedaldi, "There and Back Again: Revisiting Backpropagation
        Saliency Methods", CVPR 2020.

    Example:
        >>> maps = MetaSaliency(NormGrad(model, "layer4"))(images, target=None)
    """

    def __init__(
        self,
        method: Attribution,
        *,
        lr: float = 0.0025,
        loss: str = "cross_entropy",
        ascent: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(method, **kwargs)
        _check_choice(loss, "loss", ("cross_entropy", "score"))
        if not float(lr) >= 0:
            raise ValueError(f"lr must be a non-negative number, got {lr!r}")
        self.lr = float(lr)
        self.loss = loss
        self.ascent = bool(ascent)
        self.class_score = method.class_score

    @property
    def method(self) -> Attribution:
        """The wrapped method (``.inner``)."""
        return self.inner

    @classmethod
    def default_inner(
        cls, model: nn.Module, layer: LayerLike | None, options: dict[str, Any]
    ) -> Attribution:
        """:class:`~xai.attributions.normgrad.NormGrad` at ``layer`` (what the registry-driven
        code wraps).
        """
        return NormGrad.create(model, layer=layer)

    def _loss(self, outputs: Tensor, target: Target) -> Tensor:
        scores = target(outputs)
        if self.loss == "score":
            loss = -scores
        else:
            if outputs.dim() != 2:
                raise ValueError(
                    f"loss='cross_entropy' needs (B, n_classes) outputs, got "
                    f"{tuple(outputs.shape)}; use MetaSaliency(..., loss='score')"
                )
            loss = torch.logsumexp(outputs, dim=1) - scores
        loss = loss.sum()
        return -loss if self.ascent else loss

    def _attribute(self, inputs: Tensor, target: Target) -> Tensor:
        target = freeze(self.adapter, inputs, target)
        original = self.adapter.module
        model = copy.deepcopy(original)
        model.eval()
        params = [p for p in model.parameters()]
        for p in params:
            p.requires_grad_(True)
        saved = [p.detach().clone() for p in params]
        method = self.inner.rebind(model)
        extras = self.adapter.additional_inputs
        maps = []
        for i in range(inputs.shape[0]):
            row = torch.tensor([i], device=inputs.device)
            sample_target = target.select(row)
            x = inputs[i : i + 1]
            mine = None if extras is None else extras.subset(row)  # this sample's extras
            with torch.no_grad():
                for p, value in zip(params, saved, strict=True):
                    p.copy_(value)
            with method.adapter.bound(mine):  # the copy is another module: bind it too
                loss = self._loss(method.adapter.forward(x), sample_target)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p.sub_(g, alpha=self.lr)
            maps.append(method(x, sample_target, additional_inputs=mine))
        return torch.cat(maps)
