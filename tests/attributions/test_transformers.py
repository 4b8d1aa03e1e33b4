"""Vision transformers: every method on timm, transformers and torchvision models; rollout,
Chefer relevance and the transformer LRP composites against closed forms and planted tokens.

All models are built from configs with random weights (nothing is downloaded).
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import hook_count
from xai import attributions
from xai.adapter.reshape import token_layout
from xai.attributions import AttentionRollout, CheferRelevance, GradCAM
from xai.attributions.lrp import CPLRP, LRP, AttnLRP

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")


def _tv_vit():
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=5,
    )
    torch.nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision zero-inits the head
    return model


TINY = {
    "pretrained": False,
    "img_size": 32,
    "patch_size": 8,
    "depth": 2,
    "num_classes": 5,
    "embed_dim": 32,
    "num_heads": 2,
}
HF = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
FAMILIES = {
    "timm_vit": lambda: timm.create_model("vit_tiny_patch16_224", **TINY),
    "timm_deit": lambda: timm.create_model("deit_tiny_distilled_patch16_224", **TINY),
    "timm_swin": lambda: timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=32,
        patch_size=4,
        window_size=4,
        depths=(1, 1),
        num_heads=(2, 4),
        embed_dim=16,
        num_classes=5,
    ),
    "timm_convnext": lambda: timm.create_model(
        "convnext_atto", pretrained=False, num_classes=5, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)
    ),
    "hf_vit": lambda: transformers.ViTForImageClassification(
        transformers.ViTConfig(**HF, num_labels=5)
    ),
    "hf_clip": lambda: transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(**HF, projection_dim=8)
    ),
    "tv_vit": _tv_vit,
    "tv_swin": lambda: torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 4],
        window_size=[4, 4],
        num_classes=5,
    ),
}
# layers for models without a token default (ConvNeXt is a CNN)
LAYERS = {"timm_convnext": "stages.3"}
# cheap settings: the contract is about behaviour, not quality
CHEAP = {
    "integrated_gradients": {"n_steps": 4},
    "smooth_grad": {"n_samples": 3},
    "sobol_attribution": {"grid_size": 2, "n_designs": 2},
    "score_cam": {"batch_size": 64},
    "lrp": {"composite": "attn_lrp"},
    "salient_relevance": {"composite": "attn_lrp", "longest_side": 16},
}
WINDOWED = r"attends within \(shifted\) local windows"
NO_ATTENTION = r"has no self-attention module"
NO_RELU = r"no nn.ReLU/nn.ReLU6 modules"
MHA_LRP = r"nn.MultiheadAttention computes its query/key/value projections functionally"
# (family regex, method regex) -> message every refusal must carry (all ValueError)
REFUSALS = [
    (r".*", r"guided_grad_cam", NO_RELU),
    (r".*swin", r"attention_rollout|chefer_relevance|lrp|salient_relevance", WINDOWED),
    (r"timm_convnext", r"attention_rollout|chefer_relevance|lrp|salient_relevance", NO_ATTENTION),
    (r"tv_vit", r"lrp|salient_relevance", MHA_LRP),
    # bound propagation covers ReLU networks: GELU, LayerNorm and attention have no rule
    (r".*", r"eva", r"no bound-propagation rule|cannot be traced by torch.fx"),
]


def _refusal(family: str, method: str) -> str | None:
    for fam, meth, message in REFUSALS:
        if re.fullmatch(fam, family) and re.fullmatch(meth, method):
            return message
    return None


def _attention_state(model):
    fused = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    config = getattr(model, "config", None)
    return (
        fused,
        getattr(config, "_attn_implementation", None),
        torch.backends.mha.get_fastpath_enabled(),
    )


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build().eval() for name, build in FAMILIES.items()}


@pytest.mark.parametrize("method", attributions.available())
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_method_works_or_refuses_clearly(family, method, models):
    model = models[family]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    state = copy.deepcopy(model.state_dict())
    attention = _attention_state(model)
    refusal = _refusal(family, method)
    cls = attributions.get(method)
    if refusal is not None:
        with pytest.raises(ValueError, match=refusal):
            cls.create(model, layer=LAYERS.get(family), **CHEAP.get(method, {}))(x, target=[1, 2])
    else:
        maps = cls.create(model, layer=LAYERS.get(family), **CHEAP.get(method, {}))(
            x, target=[1, 2]
        )
        assert maps.shape == (2, 32, 32) and maps.dtype == torch.float32
        assert torch.isfinite(maps).all()
    assert hook_count(model) == 0
    assert _attention_state(model) == attention, "attention settings not restored"
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


# -- token layouts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, kind, prefix, grid, layer",
    [
        ("timm_vit", "vit", 1, (4, 4), "blocks.1.norm1"),
        ("timm_deit", "vit", 2, (4, 4), "blocks.1.norm1"),
        ("timm_swin", "swin", None, None, "layers.1.blocks.0.norm1"),
        ("timm_convnext", None, None, None, None),
        ("hf_vit", "vit", 1, (4, 4), "vit.layers.1.layernorm_before"),
        ("hf_clip", "vit", 1, (4, 4), "vision_model.encoder.layers.1.layer_norm1"),
        ("tv_vit", "vit", 1, (4, 4), "encoder.layers.encoder_layer_1.ln_1"),
        ("tv_swin", "swin", None, None, "features.3.0.norm1"),
    ],
)
def test_token_layout_per_family(family, kind, prefix, grid, layer, models):
    layout = token_layout(models[family])
    assert (layout.kind, layout.prefix, layout.grid, layout.default_layer) == (
        kind,
        prefix,
        grid,
        layer,
    )


def test_non_square_grid_and_register_tokens_follow_the_model():
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=(32, 48),
        patch_size=8,
        depth=1,
        num_classes=3,
        embed_dim=16,
        num_heads=2,
        reg_tokens=2,
    ).eval()
    assert token_layout(vit).prefix == 3 and token_layout(vit).grid == (4, 6)
    x = torch.rand(1, 3, 32, 48)
    raw = GradCAM(vit, "blocks.0.norm1", upsample=False)(x, target=0)
    assert raw.shape == (1, 4, 6)
    assert AttentionRollout(vit, upsample=False)(x).shape == (1, 4, 6)


def test_last_block_patch_tokens_warn():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **{**TINY, "depth": 1}).eval()
    with pytest.warns(UserWarning, match="zero everywhere"):
        GradCAM(vit, "blocks.0.norm2")(torch.rand(1, 3, 32, 32), target=0)


# -- Grad-CAM against pytorch-grad-cam's ViT recipe ---------------------------------------------


def test_grad_cam_equals_pytorch_grad_cam_vit_recipe():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **TINY).double().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def reshape_transform(tensor, height=4, width=4):  # the recipe of the gradcam book
        result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    mine = GradCAM(vit, "blocks.1.norm1", upsample=False)(x, target=[1, 3])
    with pgc.GradCAM(
        model=vit, target_layers=[vit.blocks[-1].norm1], reshape_transform=reshape_transform
    ) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in (1, 3)])
    ours = scale_cam_image(scale_cam_image(mine.numpy(), (32, 32))[:, None].mean(1))
    assert float(mine.max()) > 0
    np.testing.assert_allclose(ours, ref, atol=1e-4)


# -- rollout: closed form on a one-layer model ----------------------------------------------------


def test_rollout_equals_closed_form_on_one_layer():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **{**TINY, "depth": 1}).double().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():  # the attention of block 0, from the weights
        tokens = vit.patch_embed(x)
        tokens = torch.cat([vit.cls_token.expand(2, -1, -1), tokens], 1) + vit.pos_embed
        y = vit.blocks[0].norm1(tokens)
        attn = vit.blocks[0].attn
        q, k, _ = (
            F.linear(y, attn.qkv.weight, attn.qkv.bias)
            .reshape(2, 17, 3, 2, 16)
            .permute(2, 0, 3, 1, 4)
        )
        probs = (q @ k.transpose(-2, -1) / math.sqrt(16)).softmax(-1).mean(1)  # (B, N, N)
        step = 0.5 * probs + 0.5 * torch.eye(17, dtype=torch.float64)
        step = step / step.sum(-1, keepdim=True)
        expected = step[:, 0, 1:].reshape(2, 4, 4)
    got = AttentionRollout(vit, upsample=False)(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert vit.blocks[0].attn.fused_attn == timm.layers.use_fused_attn()


def test_rollout_is_the_same_on_every_attention_kernel():
    """timm fused vs eager, HF sdpa vs eager: the capture forces the eager path, same maps."""
    torch.manual_seed(0)
    hf = (
        transformers.ViTForImageClassification(
            transformers.ViTConfig(**HF, num_labels=5, attn_implementation="sdpa")
        )
        .double()
        .eval()
    )
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    sdpa = AttentionRollout(hf)(x)
    hf.config._attn_implementation = "eager"
    torch.testing.assert_close(AttentionRollout(hf)(x), sdpa)
    assert sdpa.std() > 0


# -- a planted token decides the class -----------------------------------------------------------


def _planted_vit():
    """A one-block timm ViT whose class token attends to the reddest patch and whose logit 1 is
    that patch's redness; built by hand (D = 8, one head, MLP switched off)."""
    vit = (
        timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=32,
            patch_size=8,
            depth=1,
            num_classes=2,
            embed_dim=8,
            num_heads=1,
        )
        .double()
        .eval()
    )
    e = torch.eye(8, dtype=torch.float64)
    u, w, v, out = e[0] - e[1], e[2] - e[3], e[4] - e[5], e[6] - e[7]  # zero-mean directions
    with torch.no_grad():
        for p in vit.parameters():
            p.zero_()
        for m in vit.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.fill_(1.0)
        vit.patch_embed.proj.weight[:, 0] = u[:, None, None] / 64  # mean redness along u
        vit.patch_embed.proj.bias.copy_(0.5 * w)
        vit.cls_token.copy_(v)
        qkv = vit.blocks[0].attn.qkv.weight
        qkv[0:8] = 5.0 * torch.outer(e[0], v)  # the class token's query
        qkv[8:16] = torch.outer(e[0], u)  # keys: redness
        qkv[16:24] = torch.outer(out, u)  # values: redness along `out`
        vit.blocks[0].attn.proj.weight.copy_(e)
        vit.head.weight.copy_(torch.stack([-out, out]))
    return vit


@pytest.mark.parametrize("method", ["attention_rollout", "chefer_relevance", "attn_lrp", "cp_lrp"])
def test_planted_token_gets_the_top_relevance(method):
    vit = _planted_vit()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64) * 0.3
    planted = [6, 13]  # patch indices (row-major on the 4x4 grid)
    for i, p in enumerate(planted):
        r, c = divmod(p, 4)
        x[i, 0, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = 1.0
    assert vit(x).argmax(1).tolist() == [1, 1]
    if method in ("attn_lrp", "cp_lrp"):
        maps = LRP(vit, method)(x, target=1)
    else:
        maps = attributions.get(method)(vit)(x, target=1)
    per_patch = F.avg_pool2d(maps[:, None], 8).flatten(1)  # (B, 16)
    assert per_patch.argmax(1).tolist() == planted


# -- LRP through attention: conservation ---------------------------------------------------------


def _bias_free(model):
    """Zero every bias and every constant token (class token, position embeddings): constants
    take relevance like biases, so without them relevance must be conserved."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or any(
                s in name for s in ("pos_embed", "cls_token", "position", "class_embed")
            ):
                p.zero_()
    return model


BIAS_FREE = {
    "timm_vit": lambda: timm.create_model("vit_tiny_patch16_224", **TINY),
    "hf_vit": lambda: transformers.ViTForImageClassification(
        transformers.ViTConfig(**HF, num_labels=5)
    ),
}


@pytest.mark.parametrize("family", sorted(BIAS_FREE))
def test_lrp_conservation_on_a_bias_free_vit(family):
    torch.manual_seed(0)
    model = _bias_free(BIAS_FREE[family]()).double().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    logits = getattr(out, "logits", out)[[0, 1], [1, 3]]
    cp = CPLRP(epsilon=0.0)
    total = LRP(model, cp).relevance(x, target=[1, 3]).flatten(1).sum(1)
    torch.testing.assert_close(total, logits, rtol=1e-4, atol=1e-8)  # CP-LRP: exact
    attn = AttnLRP(epsilon=0.0)
    total = LRP(model, attn).relevance(x, target=[1, 3]).flatten(1).sum(1)
    absorbed = torch.stack(list(attn.absorbed.values())).sum(0)
    assert len(attn.absorbed) == 2
    # AttnLRP: its softmax rule absorbs relevance (the Taylor bias term); the rest is conserved
    torch.testing.assert_close(total + absorbed, logits, rtol=1e-4, atol=1e-8)
    assert float(absorbed.abs().max()) > 1e-3 * float(logits.abs().max())


def test_lrp_with_biases_is_not_conservative_but_finite():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **TINY).double().eval()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    rel = LRP(vit, "cp_lrp").relevance(x, target=0)
    assert torch.isfinite(rel).all() and rel.abs().sum() > 0


def test_cnn_composite_on_a_vit_points_to_the_transformer_composites():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **TINY).eval()
    with pytest.raises(ValueError, match="composite='attn_lrp' or 'cp_lrp'"):
        LRP(vit)(torch.rand(1, 3, 32, 32), target=0)
    assert hook_count(vit) == 0


def test_unknown_leaf_module_is_refused():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **TINY).eval()
    vit.blocks[0].mlp.act = torch.nn.Softsign()  # no rule for it
    with pytest.raises(ValueError, match="no rule for module 'blocks.0.mlp.act'"):
        LRP(vit, "attn_lrp")(torch.rand(1, 3, 32, 32), target=0)
    assert hook_count(vit) == 0


# -- CLIP-style similarity on the token grid -----------------------------------------------------


def test_similarity_maps_on_a_clip_vision_tower():
    from xai.attributions.similarity import SimilarityMaps

    torch.manual_seed(0)
    clip = (
        transformers.CLIPVisionModelWithProjection(
            transformers.CLIPVisionConfig(**HF, projection_dim=8)
        )
        .double()
        .eval()
    )
    layer = token_layout(clip).default_layer
    sim = SimilarityMaps(clip, layer, pooling="grad_cam", metric="cosine", reshape="auto")
    gen = torch.Generator().manual_seed(6)
    query = torch.rand(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    refs = torch.rand(3, 3, 32, 32, generator=gen, dtype=torch.float64)
    q_maps, r_maps = sim(query, refs)
    assert q_maps.shape == (3, 32, 32) and r_maps.shape == (3, 32, 32)
    assert torch.isfinite(q_maps).all() and torch.isfinite(r_maps).all()

    def emb(t):
        return F.normalize(clip(t).image_embeds, dim=1)

    expected = (emb(query) @ emb(refs).T)[0]
    torch.testing.assert_close(sim.similarity(query, refs).double(), expected)
    assert hook_count(clip) == 0


def test_an_attention_module_the_forward_bypasses_raises_instead_of_an_empty_map():
    class Bypass(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = torch.nn.Conv2d(3, 8, 8, stride=8)
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)  # never called
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.patch(x).flatten(2).mean(2))

    model = Bypass().eval()
    with pytest.raises(RuntimeError, match="called 0 times"):
        AttentionRollout(model)(torch.rand(1, 3, 32, 32))
    assert hook_count(model) == 0 and torch.backends.mha.get_fastpath_enabled()


def test_chefer_relevance_depends_on_the_target_and_rollout_does_not():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **TINY).double().eval()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    assert torch.equal(AttentionRollout(vit)(x, target=0), AttentionRollout(vit)(x, target=3))
    assert not torch.allclose(CheferRelevance(vit)(x, target=0), CheferRelevance(vit)(x, target=3))
