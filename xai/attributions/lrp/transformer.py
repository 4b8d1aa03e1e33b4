r"""LRP through vision transformers: AttnLRP and CP-LRP composites.

Selected like the CNN composites: ``LRP(vit, composite="attn_lrp")`` or ``"cp_lrp"``.

Transformers compute most of their non-linear operations functionally (``q @ k.T``, softmax,
``attn @ v``, residual sums), out of reach of module rules. These composites therefore use the
*gradient form* of LRP (the implementation strategy of the AttnLRP authors' LXT library): the
backward pass carries ``g = R / z`` (relevance divided by the activation) instead of ``R``, so
that the relevance of any tensor is ``R = z * g`` and the input relevance is ``x * g_x``.
In that form LRP-0 on a linear operation *is* its plain gradient, and so is LRP's proportional
split of a residual sum, so functional sums, reshapes and token selection need no hook. Only the
following get a rule (forward hooks of the adapter's :func:`xai.adapter.rules.rewired`):

=========================  ==================================================================
operation                  rule (gradient form)
=========================  ==================================================================
linear / conv layers       epsilon: ``g_in = W^T (g * z / (z + eps sign z))``
LayerNorm                  the normalization's standard deviation taken as constant (identity
                           rule on the division, epsilon on the centring and affine part)
GELU and other element-    identity rule ``R_in = R_out``: ``g_in = g * act(x) / x``
wise activations
``q @ k.T``, ``A @ v``     uniform rule for a bilinear product (half of the relevance to each
                           factor): AttnLRP. The gradients reaching the query, key and value
                           projections are scaled by 1/4, 1/4, 1/2 (each factor of both
                           products halves, and the backward passes between are linear)
softmax                    AttnLRP: ``R_in = x (R_out - s sum R_out)`` (Achtibat et al., Prop.
                           3.3), which in gradient form is the plain softmax gradient
attention probabilities    CP-LRP: held constant (Ali et al. 2022): no relevance to queries and
                           keys, all of it through the values (factors 0, 0, 1)
=========================  ==================================================================

Because the factors act on the projections' outputs, fused attention kernels
(``scaled_dot_product_attention``) need no special path here: their backward is the exact
gradient.

Conservation: with ``epsilon=0`` and no biases (and zero class token / position embedding,
which are constants that take relevance like biases), CP-LRP conserves exactly:
``sum(R_input) = f(x)``. AttnLRP's softmax rule is not conservative (a Taylor expansion at the
input leaves a bias term; see also You et al. 2025): the relevance lost between the attention
output and the query/key/value projections is reported per attention module in
:attr:`TransformerComposite.absorbed`, and ``sum(R_input) + sum(absorbed) = f(x)``.

Supported: timm ViT/DeiT (``Attention``), Hugging Face ``transformers`` ViT and CLIP vision
towers (``q_proj``/``k_proj``/``v_proj``). Refused with a clear error: ``nn.MultiheadAttention``
(torchvision ViT; its projections are functional), windowed attention (Swin), models without
attention (use the CNN composites), and any leaf module without a rule.

References:
    Achtibat et al., "AttnLRP: attention-aware layer-wise relevance propagation for
    transformers", ICML 2024. Ali et al., "XAI for transformers: better explanations through
    conservative propagation" (CP-LRP), ICML 2022.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from xai.adapter import Target, chunks, hooks
from xai.adapter.attention import attention_sites
from xai.adapter.hooks import ForwardHook
from xai.adapter.rules import BackwardRule, Call, rewired
from xai.attributions.lrp.composites import _PRESETS, ACTIVATIONS, Composite
from xai.attributions.lrp.lrp import LRP, _refuse
from xai.attributions.lrp.rules import divide, linear_forward, stabilize

__all__ = ["CPLRP", "AttnLRP", "TransformerComposite"]

# Leaves whose plain gradient is already the rule (identity, reshapes, constants).
_PLAIN = (nn.Dropout, nn.Identity, nn.Flatten, nn.Embedding)
_PLAIN_NAMES = ("DropPath", "LayerScale", "Identity")
_LINEAR = (nn.Linear, nn.Conv2d)


def _is_activation(module: nn.Module) -> bool:
    origin = type(module).__module__
    return isinstance(module, ACTIVATIONS) or origin.startswith(
        ("transformers.activations", "timm.layers.activations")
    )


def _is_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) and "2d" not in type(module).__name__.lower()


class TransformerComposite(Composite):
    """Gradient-form LRP composite for vision transformers (see the module docstring).

    Args:
        qk_factor: factor on the relevance (gradient) reaching queries and keys: ``0.25``
            (AttnLRP's uniform rule on both bilinear products) or ``0`` (CP-LRP).
        v_factor: the same for values: ``0.5`` (AttnLRP) or ``1`` (CP-LRP).
        epsilon: epsilon of linear layers and layer norms (default ``1e-6``; ``0`` is LRP-0).

    Attributes:
        absorbed: after a call, attention module name -> ``(B,)`` relevance that its
            query/key path did not pass on (zero for CP-LRP up to ``epsilon``).
    """

    def __init__(self, qk_factor: float, v_factor: float, epsilon: float = 1e-6) -> None:
        super().__init__([], stabilizer=epsilon)
        self.qk_factor = float(qk_factor)
        self.v_factor = float(v_factor)
        self.epsilon = float(epsilon)
        self.absorbed: dict[str, Tensor] = {}

    def supported_types(self) -> list[str]:
        """Names of the module types this composite has a rule for."""
        return [
            "Linear",
            "Conv2d",
            "LayerNorm",
            "GELU (and element-wise activations)",
            "Dropout",
            "Identity",
            "DropPath",
            "LayerScale",
            "Embedding",
            "timm Attention",
            "transformers attention (q_proj/k_proj/v_proj)",
        ]

    # planning -----------------------------------------------------------------------------
    def _plan(
        self, model: nn.Module
    ) -> tuple[dict[nn.Module, BackwardRule], dict[nn.Module, ForwardHook]]:
        try:
            sites = attention_sites(model)
        except ValueError as err:
            raise ValueError(
                f"composite {type(self).__name__} explains vision transformers with global "
                f"attention (timm ViT/DeiT, transformers ViT/CLIP vision): {err}. For CNNs use "
                "a CNN composite such as 'epsilon_plus_flat'"
            ) from None
        factors: dict[nn.Module, Tensor] = {}
        owner: dict[nn.Module, str] = {}
        outputs: dict[nn.Module, str] = {}
        for site in sites:
            if site.kind == "mha":
                raise ValueError(
                    f"LRP cannot see inside {site.name!r} (nn.MultiheadAttention computes its "
                    "query/key/value projections functionally); the transformer composites "
                    "support timm and transformers ViTs"
                )
            if getattr(site.module, "gate", None) is not None:
                raise ValueError(
                    f"attention {site.name!r} has an output gate, which no rule covers"
                )
            for linear, features, role in site.projections:
                owner[linear] = site.name
                vector = factors.setdefault(linear, torch.ones(_tensor(linear, "weight").shape[0]))
                factor = self.v_factor if role == "v" else self.qk_factor
                vector[features if features is not None else slice(None)] = factor
            out = next(
                (
                    getattr(site.module, n)
                    for n in ("proj", "o_proj", "out_proj")
                    if isinstance(getattr(site.module, n, None), nn.Linear)
                ),
                None,
            )
            if out is None:
                raise ValueError(f"attention {site.name!r} has no output projection")
            outputs[out] = site.name
        rules: dict[nn.Module, BackwardRule] = {}
        refuse: dict[nn.Module, ForwardHook] = {}
        for name, module in model.named_modules():
            if next(module.children(), None) is not None:
                continue
            if isinstance(module, _LINEAR):
                rules[module] = self._linear_rule(
                    factors.get(module), owner.get(module), outputs.get(module)
                )
            elif _is_layer_norm(module):
                rules[module] = self._norm_rule
            elif _is_activation(module):
                rules[module] = _identity_rule
            elif not (isinstance(module, _PLAIN) or type(module).__name__ in _PLAIN_NAMES):
                refuse[module] = _refuse(
                    f"LRP ({type(self).__name__}) has no rule for module {name!r} "
                    f"({type(module).__name__}). Supported: {', '.join(self.supported_types())}"
                )
        return rules, refuse

    # rules (gradient form: they map g_out = R_out / z to g_in = R_in / x) -------------------
    def _ratio(self, z: Tensor) -> Tensor:
        return divide(z, stabilize(z, self.epsilon))

    def _linear_rule(self, factor: Tensor | None, owner: str | None, attention: str | None):
        """Epsilon rule; ``factor`` scales the output features of a q/k/v projection of the
        attention module ``owner``; ``attention`` names the module whose output projection
        this is.
        """

        def rule(call: Call, grad: Tensor) -> Tensor:
            g = grad * self._ratio(call.output)
            if factor is not None:
                g = g * factor.to(g)
            weight = _tensor(call.module, "weight").detach()
            if isinstance(call.module, nn.Linear):  # the vector-Jacobian product, directly
                g_in = g.matmul(weight.to(g.dtype))
            else:
                x = call.input.detach().requires_grad_(True)
                with torch.enable_grad():
                    z = linear_forward(call.module, x, weight, None)
                    (g_in,) = torch.autograd.grad(z, x, g)
            if attention is not None:  # relevance entering the attention core's output
                self._entering[attention] = (call.input * g_in).flatten(1).sum(1)
            if owner is not None:  # relevance leaving through q/k/v
                leaving = (call.output * g).flatten(1).sum(1)
                self._leaving[owner] = self._leaving.get(owner, 0) + leaving
            return g_in

        return rule

    def _norm_rule(self, call: Call, grad: Tensor) -> Tensor:
        module = cast(nn.LayerNorm, call.module)  # _plan gives this rule to LayerNorms only
        dims = tuple(range(-len(module.normalized_shape), 0))
        g = grad * self._ratio(call.output)
        x = call.input.detach().requires_grad_(True)
        with torch.enable_grad():
            centred = x - x.mean(dims, keepdim=True)
            std = (centred.detach().pow(2).mean(dims, keepdim=True) + module.eps).sqrt()
            y = centred / std
            if module.weight is not None:
                y = y * module.weight.detach()
            (g_in,) = torch.autograd.grad(y, x, g)
        return g_in

    # the engine ---------------------------------------------------------------------------
    def relevance(self, lrp: LRP, inputs: Tensor, target: Target) -> Tensor:
        """Input relevance ``(B, C, H, W)`` (called by :class:`~xai.attributions.lrp.LRP`)."""
        model = lrp.adapter.module
        rules, refuse = self._plan(model)
        out: list[Tensor] = []
        absorbed: dict[str, list[Tensor]] = {}
        for chunk in chunks(inputs.shape[0], lrp.batch_size):
            rows = torch.arange(chunk.start, chunk.stop)
            tgt = target if target.needs_freeze else target.select(rows)
            x = inputs[chunk].detach().clone().requires_grad_(True)
            self._entering: dict[str, Tensor] = {}
            self._leaving: dict[str, Tensor] = {}
            with hooks(forward=refuse), rewired(rules):
                output = lrp.adapter.forward(x, rows=rows)
                if not output.requires_grad:
                    raise RuntimeError("the model output does not depend on the input")
                scores = tgt(output)
                (grad,) = torch.autograd.grad(scores.sum(), output, retain_graph=True)
                if lrp.init == "one":  # R_out = grad, so g = grad / output
                    grad = divide(grad, output.detach())
                (g_x,) = torch.autograd.grad(output, x, grad_outputs=grad)
            out.append((x.detach() * g_x).detach())
            for name, entering in self._entering.items():
                left = self._leaving.get(name, torch.zeros_like(entering))
                absorbed.setdefault(name, []).append((entering - left).detach())
        self.absorbed = {n: torch.cat(v) for n, v in absorbed.items()}
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon})"


def _tensor(module: nn.Module, name: str) -> Tensor:
    """``module.<name>`` as a tensor (``nn.Module.__getattr__`` is typed ``Tensor | Module``)."""
    value = getattr(module, name)
    if not isinstance(value, Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def _identity_rule(call: Call, grad: Tensor) -> Tensor:
    """Identity rule for an element-wise activation: ``R_in = R_out``."""
    return grad * divide(call.output, call.input)


class AttnLRP(TransformerComposite):
    """AttnLRP (Achtibat et al., ICML 2024): uniform rule on ``q k^T`` and ``A v``, softmax rule.

    Args:
        epsilon: epsilon of linear layers and layer norms (default ``1e-6``).
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__(qk_factor=0.25, v_factor=0.5, epsilon=epsilon)


class CPLRP(TransformerComposite):
    """CP-LRP (Ali et al., ICML 2022): attention probabilities held constant; conservative.

    Args:
        epsilon: epsilon of linear layers and layer norms (default ``1e-6``).
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        super().__init__(qk_factor=0.0, v_factor=1.0, epsilon=epsilon)


_PRESETS.update({"attn_lrp": AttnLRP, "cp_lrp": CPLRP})
