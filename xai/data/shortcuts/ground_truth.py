"""The container of the ground-truth sets: images, labels, exact object and shortcut masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["GroundTruthSet"]


@dataclass
class GroundTruthSet:
    """A labelled image set with exact ground-truth masks.

    Attributes:
        inputs: ``(N, C, H, W)`` float32 model-ready images.
        labels: ``(N,)`` long class indices.
        masks: ``(N, H, W)`` bool object masks (the garment; the pasted cut-out).
        groups: ``(N,)`` long group ids (planted set: 1 = patched; background set: the texture).
        group_names: name of each group id.
        class_names: name of each class index.
        shortcut_masks: ``(N, H, W)`` bool masks of the spurious cue where it is known exactly
            (the planted patch; all-False on images without it), or ``None``.
        mean, std: per-channel normalization of ``inputs`` (to display them), or ``None``.
        info: how the set was built (sizes, seed, patch box ``(y0, x0, y1, x1)``, ...).
        backgrounds: ``(N, C, H, W)`` the images before the object was pasted (background-swap
            set with ``keep_backgrounds=True``), else ``None``.
    """

    inputs: Tensor
    labels: Tensor
    masks: Tensor
    groups: Tensor
    group_names: list[str]
    class_names: list[str]
    shortcut_masks: Tensor | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    info: dict = field(default_factory=dict)
    backgrounds: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(image (C, H, W), label, mask (H, W), group)``: the tuple :func:`xai.audit.audit`
        reads from a dataset.
        """
        return self.inputs[index], self.labels[index], self.masks[index], self.groups[index]

    def subset(self, index: Tensor | Sequence[int] | slice) -> GroundTruthSet:
        """The same set restricted to ``index`` (a slice, indices or a bool mask)."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return GroundTruthSet(
            self.inputs[index], self.labels[index], self.masks[index], self.groups[index],
            list(self.group_names), list(self.class_names), pick(self.shortcut_masks),
            self.mean, self.std, dict(self.info), pick(self.backgrounds),
        )  # fmt: skip
