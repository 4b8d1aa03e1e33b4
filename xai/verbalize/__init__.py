"""Attribution maps in words (saliency map verbalization, Feldhus et al. 2023).

    from xai.verbalize import Verbalizer, ground_truth_labels
    words = Verbalizer()
    words(maps, "shirt")              # one paragraph per (B, H, W) map
    d = words.describe(maps, "shirt", ground_truth_labels(data), objects=data.class_names)
    d[0].text, d[0].regions[0].share  # the sentence and the numbers it quotes

* :class:`Verbalizer`: model-free, deterministic sentences: salient regions (connected
  components above a threshold, or the top-k share), their position, size and share, named by
  object/concept/group masks; negative evidence; comparisons of two classes, images or methods.
* :class:`InstructionVerbalizer`: a prompt built from those facts for any ``prompt -> text``
  callable the user supplies, and :func:`check` of the answer's numbers and positions.
* :class:`Templates`: every format string in one place, to translate.
"""

from xai.verbalize.audit import describe_audit, flag_sentence
from xai.verbalize.grounding import PATCH_NAME, concept_labels, ground_truth_labels
from xai.verbalize.instruction import (
    CheckResult,
    InstructionVerbalizer,
    VerbalizationResult,
    build_prompt,
    check,
)
from xai.verbalize.regions import Region, find_regions, grid_shares, position
from xai.verbalize.templates import ENGLISH, Templates
from xai.verbalize.verbalizer import (
    Comparison,
    Description,
    LabelFact,
    Verbalizer,
    percent,
    region_words,
)

__all__ = [
    "ENGLISH",
    "PATCH_NAME",
    "CheckResult",
    "Comparison",
    "Description",
    "InstructionVerbalizer",
    "LabelFact",
    "Region",
    "Templates",
    "VerbalizationResult",
    "Verbalizer",
    "build_prompt",
    "check",
    "concept_labels",
    "describe_audit",
    "find_regions",
    "flag_sentence",
    "grid_shares",
    "ground_truth_labels",
    "percent",
    "position",
    "region_words",
]
