"""Instruction-based verbalization with a user's text generator, and a checker of its claims.

Feldhus et al. (2023) prompt ChatGPT with the token attributions and an instruction (SMV-GPT);
its explanations were rated best by people but its numbers were not faithful. Here the prompt
is built from the model-free facts of :class:`~xai.verbalize.Verbalizer` (regions, named
areas, negative evidence, a 3x3 grid of shares) and sent to any callable ``prompt -> text``
the user supplies: nothing in the library downloads or calls a language model. The answer is
then checked against the facts (:func:`check`): every percentage must be one of them (within
0.5 points) and every position phrase must be a quoted region's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from xai.verbalize.regions import Region
from xai.verbalize.templates import ENGLISH, Templates
from xai.verbalize.verbalizer import Description, Labels, Verbalizer, percent, region_words

__all__ = ["CheckResult", "InstructionVerbalizer", "VerbalizationResult", "build_prompt", "check"]

_PERCENT = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)\s?%")


@dataclass(frozen=True)
class CheckResult:
    """Claims of a text compared with the facts of a :class:`~xai.verbalize.Description`.

    Attributes:
        numbers: every percentage quoted in the text, in order.
        unsupported_numbers: those more than ``tolerance`` points from every fact.
        positions: the position phrases of the templates that the text uses.
        unsupported_positions: those that are no quoted region's position.
        coverage: coverage@k for k = 1, 2, 3: the summed share of the top-k regions the text
            mentions (by position phrase or label name), the image analogue of the paper's
            coverage@k.
    """

    numbers: tuple[float, ...]
    unsupported_numbers: tuple[float, ...]
    positions: tuple[str, ...]
    unsupported_positions: tuple[str, ...]
    coverage: tuple[float, ...]

    @property
    def ok(self) -> bool:
        """No number and no position contradicts the facts."""
        return not self.unsupported_numbers and not self.unsupported_positions


@dataclass(frozen=True)
class VerbalizationResult:
    """The generator's text, the prompt it saw, the facts and the check."""

    text: str
    prompt: str
    description: Description
    check: CheckResult

    @property
    def regions(self) -> tuple[Region, ...]:
        """The positive regions of the facts."""
        return self.description.regions

    def __str__(self) -> str:
        return self.text


def _facts(description: Description) -> list[float]:
    """Every percentage the facts hold (shares, areas, grid cells, labels, rest), in points."""
    d = description
    values = [100 * v for r in (*d.regions, *d.against) for v in (r.share, r.area)]
    values += [100 * f.area for f in d.labels]
    values += [100 * v for f in d.labels for v in (f.share, f.negative_share) if np.isfinite(v)]
    values += (100 * np.asarray(d.grid)).ravel().tolist()
    values.append(100 * d.rest)
    return values


def check(
    text: str,
    description: Description,
    *,
    tolerance: float = 0.5,
    templates: Templates = ENGLISH,
) -> CheckResult:
    """Flag the claims of ``text`` that contradict the facts of ``description``.

    A percentage ("66.7%", "66.7 %", "66,7%") is supported when it is within ``tolerance``
    points of a fact: a region's share or area (positive or negative), a named area's area or
    share, a grid cell's share, or the rest. A position phrase of the templates ("in the upper
    left", "at the top") is supported when a quoted region (positive or negative) lies there.
    Words outside the template vocabulary ("top left corner") are not judged.

    Args:
        text: the text to check (any source: a language model, a person, a template).
        description: the facts (:meth:`Verbalizer.describe`).
        tolerance: in percentage points (default 0.5: a one-decimal rounding passes).
        templates: the vocabulary of position phrases.

    Returns:
        A :class:`CheckResult`; ``.ok`` is ``False`` when a claim is unsupported.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    facts = np.asarray(_facts(description))
    numbers = tuple(float(m.replace(",", ".")) for m in _PERCENT.findall(text))
    bad = tuple(n for n in numbers if not (np.abs(facts - n) <= tolerance + 1e-9).any())
    lower = text.lower()
    used = tuple(p for p in templates.positions.values() if p.lower() in lower)
    regions = (*description.regions, *description.against)
    real = {templates.positions[(r.row, r.col)] for r in regions}
    wrong = tuple(p for p in used if p not in real)
    mentioned = [
        templates.positions[(r.row, r.col)].lower() in lower
        or (r.label is not None and r.label.lower() in lower)
        for r in description.regions
    ]
    coverage = tuple(
        float(
            sum(r.share for r, m in zip(description.regions[:k], mentioned[:k], strict=True) if m)
        )
        for k in (1, 2, 3)
    )
    return CheckResult(numbers, bad, used, wrong, coverage)


def build_prompt(
    description: Description,
    *,
    objective: str = "commonsense",
    model: str = "image classifier",
    text: str = "image",
    templates: Templates = ENGLISH,
    naming: str = "peak",
) -> str:
    """The SMV-GPT prompt (Feldhus et al. 2023, adapted): the facts, then the instruction.

    The token/score list of the paper becomes the list of regions with their share of the
    relevance and area, the named areas, the negative regions, the rest and a 3x3 grid of
    shares (the per-"token" table); then the paper's context and its ``commonsense`` or
    ``saliency`` objective, with ``{model}`` = "image classifier" and ``{text}`` = "image".
    ``naming`` is the verbalizer's (how a region's label is phrased).
    """
    t = templates
    d = description
    if objective not in ("commonsense", "saliency"):
        raise ValueError(f"objective must be 'commonsense' or 'saliency', got {objective!r}")

    def phrase(r: Region) -> dict[str, str]:
        return region_words(r, t, naming)

    lines = [t.prompt_regions]
    lines += [t.prompt_region.format(index=i, **phrase(r)) for i, r in enumerate(d.regions, 1)]
    if not d.regions:
        lines.append(t.prompt_no_region)
    elif d.rest > 0:
        lines.append(t.prompt_rest.format(rest=percent(d.rest)))
    if d.against:
        lines.append(t.prompt_against.format(target=d.target))
        lines += [
            t.prompt_against_region.format(index=i, **phrase(r)) for i, r in enumerate(d.against, 1)
        ]
    if d.labels and d.total_positive > 0:
        lines.append(t.prompt_labels)
        lines += [
            t.prompt_label.format(label=f.name, area=percent(f.area), share=percent(f.share))
            for f in d.labels
        ]
    lines.append(t.prompt_grid)
    for name, row in zip(t.prompt_grid_rows, np.asarray(d.grid), strict=True):
        lines.append(f"{name}: " + " ".join(f"{percent(v)}%" for v in row))
    lines.append(t.prompt_context.format(model=model, text=text, target=d.target))
    instruction = t.prompt_commonsense if objective == "commonsense" else t.prompt_saliency
    lines.append(instruction.format(model=model, text=text, target=d.target))
    return "\n".join(lines)


class InstructionVerbalizer:
    """Explain maps in free text with a user-supplied generator, grounded in checked facts.

    Args:
        generate: any callable ``prompt (str) -> text (str)``: a local language model, a
            service client, a person at a keyboard, or a fake in tests. Called once per map;
            its exceptions propagate unchanged. Nothing is downloaded or called by the library.
        verbalizer: computes the facts (default ``Verbalizer()``; its templates are used).
        objective: ``"commonsense"`` (default: explain why) or ``"saliency"`` (name the most
            important regions), the paper's two instructions.
        model: how the prompt calls the model (default ``"image classifier"``).
        tolerance: of the :func:`check`, in percentage points (default 0.5).

    Raises:
        TypeError: ``generate`` is not callable.
        ValueError: an unknown objective.
    """

    def __init__(
        self,
        generate: Callable[[str], str],
        *,
        verbalizer: Verbalizer | None = None,
        objective: str = "commonsense",
        model: str = "image classifier",
        tolerance: float = 0.5,
    ) -> None:
        if not callable(generate):
            raise TypeError(
                f"generate must be a callable prompt -> text, got {type(generate).__name__}"
            )
        if objective not in ("commonsense", "saliency"):
            raise ValueError(f"objective must be 'commonsense' or 'saliency', got {objective!r}")
        self.generate = generate
        self.verbalizer = verbalizer if verbalizer is not None else Verbalizer()
        self.objective = objective
        self.model = model
        self.tolerance = tolerance

    def __call__(
        self,
        attributions: Tensor | np.ndarray,
        target_names: str | Sequence[str],
        labels: Labels = None,
        *,
        objects: str | Sequence[str] = (),
    ) -> list[VerbalizationResult]:
        """Prompt, generate and check, once per map (arguments as :meth:`Verbalizer.describe`).

        Raises:
            TypeError: ``generate`` returned something other than a ``str``.
        """
        out = []
        templates = self.verbalizer.templates
        for d in self.verbalizer.describe(attributions, target_names, labels, objects=objects):
            prompt = build_prompt(
                d,
                objective=self.objective,
                model=self.model,
                templates=templates,
                naming=self.verbalizer.naming,
            )
            text = self.generate(prompt)
            if not isinstance(text, str):
                raise TypeError(f"generate must return a str, got {type(text).__name__}")
            result = check(text, d, tolerance=self.tolerance, templates=templates)
            out.append(VerbalizationResult(text, prompt, d, result))
        return out
