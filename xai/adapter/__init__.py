"""The hook-based model adapter shared by every method: the only code that touches hooks."""

from xai.adapter.attention import AttentionSite, attention_maps, attention_sites
from xai.adapter.capture import Capture, ModelAdapter
from xai.adapter.hooks import hooks
from xai.adapter.layers import LayerInfo, list_layers, resolve_layer
from xai.adapter.reshape import TokenLayout, swin_reshape, token_layout, vit_reshape
from xai.adapter.state import preserved
from xai.adapter.targets import (
    CallableTarget,
    ClassTarget,
    Detections,
    DetectionTarget,
    ProbabilityTarget,
    SegmentationTarget,
    SimilarityTarget,
    Target,
    as_target,
    unwrap_output,
)

__all__ = [
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
    "SimilarityTarget",
    "Target",
    "TokenLayout",
    "as_target",
    "attention_maps",
    "attention_sites",
    "hooks",
    "list_layers",
    "preserved",
    "resolve_layer",
    "swin_reshape",
    "token_layout",
    "unwrap_output",
    "vit_reshape",
]
