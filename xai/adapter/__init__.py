"""The hook-based model adapter shared by every method: the only code that touches hooks."""

from xai.adapter.attention import AttentionSite, attention_maps, attention_sites
from xai.adapter.capture import Capture, ModelAdapter
from xai.adapter.detection import DetectionTarget
from xai.adapter.detector_output import Detections
from xai.adapter.extras import AdditionalInputs, Shared
from xai.adapter.hooks import hooks
from xai.adapter.layers import LayerInfo, list_layers, resolve_layer
from xai.adapter.reshape import TokenLayout, swin_reshape, token_layout, vit_reshape
from xai.adapter.scoring import (
    AUTO_MAX_CHUNK,
    AutoChoice,
    BatchSize,
    as_adapter,
    auto_batch_sizes,
    check_batch_size,
    chunks,
    freeze,
    freeze_scored,
    reset_auto_batch_sizes,
    score_rows,
)
from xai.adapter.state import preserved
from xai.adapter.targets import (
    CallableTarget,
    ClassTarget,
    ProbabilityTarget,
    SegmentationTarget,
    SimilarityTarget,
    Target,
    as_target,
    unwrap_output,
)

__all__ = [
    "AUTO_MAX_CHUNK",
    "AdditionalInputs",
    "AutoChoice",
    "BatchSize",
    "AttentionSite",
    "Capture",
    "CallableTarget",
    "ClassTarget",
    "DetectionTarget",
    "Detections",
    "LayerInfo",
    "ModelAdapter",
    "ProbabilityTarget",
    "SegmentationTarget",
    "Shared",
    "SimilarityTarget",
    "Target",
    "TokenLayout",
    "as_adapter",
    "as_target",
    "attention_maps",
    "attention_sites",
    "auto_batch_sizes",
    "check_batch_size",
    "chunks",
    "freeze",
    "freeze_scored",
    "hooks",
    "list_layers",
    "preserved",
    "reset_auto_batch_sizes",
    "resolve_layer",
    "score_rows",
    "swin_reshape",
    "token_layout",
    "unwrap_output",
    "vit_reshape",
]
