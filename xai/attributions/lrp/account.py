r"""The relevance account of one LRP explanation: where the target score went, layer by layer.

LRP promises conservation: the input relevance plus what biases and stabilizers absorbed equals
the explained score. On real networks the biases (batch-norm shifts included) can absorb almost
all of it, and an input relevance of 1e-5 of the logit looks like a bug. The account tells
absorption from a leak: every row is one rewired layer, residual sum or functional pooling, with

* ``relevance_in``: the relevance arriving at the layer's output (from the layers above);
* ``relevance_out``: what it passes to its input;
* ``bias``: what its bias (a merged batch norm's shift included) absorbed,
  :math:`\\sum_k b_k R_k / \\mathrm{stab}(z_k)`;
* ``stabilizer``: what the epsilon of the normalizer absorbed,
  :math:`\\sum_k R_k (1 - z_k / \\mathrm{stab}(z_k))`;
* ``rule_term``: rule-specific absorption (outputs with a zero normalizer, gamma's sign masks,
  alpha-beta's missing share);
* ``leak``: ``relevance_in - relevance_out - absorbed``, zero (to rounding) for every rule of
  this library; a custom rule that drops relevance without booking it shows up here.

Rows are ordered from the output to the input (the order of the backward pass). Each quantity
is a ``(B,)`` float64 tensor (one value per sample). The rows telescope: ``score - input =
sum(relevance_in - relevance_out)`` plus ``untracked``, the relevance changed by functional
operations that no row sees (zero on torchvision classifiers with ``canonizers="auto"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from xai.attributions.lrp.rules import _per_sample

__all__ = ["AccountRow", "RelevanceAccount"]

ABSORBED = ("bias", "stabilizer", "rule")


@dataclass
class AccountRow:
    """One layer (or residual sum, or functional pooling) of a :class:`RelevanceAccount`.

    Attributes:
        name: the module's dotted name; residual sums are ``"<block> (sum)"`` and functional
            links ``"<model> (functional pooling)"``.
        kind: ``"layer"``, ``"residual"`` or ``"functional"``.
        rule: the rule's ``repr``.
        calls: how many times the module was called (shared modules, e.g. a ResNet block's
            ReLU, add up their calls).
        relevance_in, relevance_out, bias, stabilizer, rule_term: ``(B,)`` float64 sums.
    """

    name: str
    kind: str
    rule: str
    relevance_in: Tensor
    relevance_out: Tensor
    bias: Tensor
    stabilizer: Tensor
    rule_term: Tensor
    calls: int = 1

    @property
    def absorbed(self) -> Tensor:
        """``bias + stabilizer + rule_term``, ``(B,)``."""
        return self.bias + self.stabilizer + self.rule_term

    @property
    def leak(self) -> Tensor:
        """``relevance_in - relevance_out - absorbed``, ``(B,)``: relevance lost unexplained."""
        return self.relevance_in - self.relevance_out - self.absorbed

    def scale(self) -> Tensor:
        """The largest magnitude in the row's identity, ``(B,)`` (the reference of ``rtol``)."""
        parts = [self.relevance_in, self.relevance_out, self.bias, self.stabilizer, self.rule_term]
        return torch.stack([p.abs() for p in parts]).amax(0)

    def leaks(self, rtol: float = 1e-4) -> Tensor:
        """``(B,)`` bool: ``|leak| > rtol * scale`` (``in = out + absorbed`` fails)."""
        return self.leak.abs() > rtol * self.scale().clamp_min(torch.finfo(torch.float64).tiny)


@dataclass
class RelevanceAccount:
    """Per-layer relevance balance of :meth:`LRP.account <xai.attributions.lrp.lrp.LRP.account>`.

    Attributes:
        relevance: the input relevance ``(B, C, H, W)`` (what :meth:`LRP.relevance` returns).
        score: ``(B,)`` the relevance put on the output (the target logit for
            ``init="logit"``).
        rows: :class:`AccountRow` objects from the output to the input.
    """

    relevance: Tensor
    score: Tensor
    rows: list[AccountRow] = field(default_factory=list)

    @property
    def input_total(self) -> Tensor:
        """``(B,)`` sum of the input relevance."""
        return self.relevance.reshape(self.relevance.shape[0], -1).sum(1, dtype=torch.float64)

    def absorbed(self) -> dict[str, Tensor]:
        """``{"bias", "stabilizer", "rule", "leak"}``: totals over the rows, ``(B,)`` each."""
        zero = torch.zeros_like(self.score)
        totals = {"bias": zero, "stabilizer": zero, "rule": zero, "leak": zero}
        for row in self.rows:
            totals = {
                "bias": totals["bias"] + row.bias,
                "stabilizer": totals["stabilizer"] + row.stabilizer,
                "rule": totals["rule"] + row.rule_term,
                "leak": totals["leak"] + row.leak,
            }
        return totals

    @property
    def untracked(self) -> Tensor:
        """``(B,)``: ``score - input - sum(in - out)``, changed outside every row (functional
        operations without a rule); zero when the rows reconcile the score with the input.
        """
        through = sum(
            (r.relevance_in - r.relevance_out for r in self.rows), torch.zeros_like(self.score)
        )
        return self.score - self.input_total - through

    def leaking(self, rtol: float = 1e-4) -> list[str]:
        """Names of the rows where ``in = out + absorbed`` fails for some sample."""
        return [row.name for row in self.rows if bool(row.leaks(rtol).any())]

    def table(self, sample: int = 0) -> str:
        """A plain-text table of one sample's account, relative to its score."""
        score = float(self.score[sample])
        ref = abs(score) if score else 1.0
        head = (
            f"{'layer':<36}{'rule':<14}{'in':>10}{'out':>10}{'bias':>10}{'stab.':>10}"
            f"{'rule':>10}{'leak':>10}"
        )
        lines = [f"score {score:.6g}; columns are fractions of it", head]
        for row in self.rows:
            values = [
                row.relevance_in,
                row.relevance_out,
                row.bias,
                row.stabilizer,
                row.rule_term,
                row.leak,
            ]
            rule = row.rule.split("(")[0][:13]
            lines.append(
                f"{row.name[:35]:<36}{rule:<14}"
                + "".join(f"{float(v[sample]) / ref:>10.4f}" for v in values)
            )
        totals = self.absorbed()
        lines.append(
            f"input {float(self.input_total[sample]) / ref:.4f}, bias "
            f"{float(totals['bias'][sample]) / ref:.4f}, stabilizer "
            f"{float(totals['stabilizer'][sample]) / ref:.4f}, rule "
            f"{float(totals['rule'][sample]) / ref:.4f}, leak "
            f"{float(totals['leak'][sample]) / ref:.2e}, untracked "
            f"{float(self.untracked[sample]) / ref:.2e}"
        )
        return "\n".join(lines)


class AccountBook:
    """Collects rows during one backward pass (internal to :class:`~.lrp.LRP`)."""

    def __init__(self) -> None:
        self.rows: dict[str, AccountRow] = {}

    def add(
        self,
        name: str,
        kind: str,
        rule: object,
        relevance_in: Tensor,
        relevance_out: Tensor | tuple[Tensor, ...],
        ledger: dict,
    ) -> None:
        outs = relevance_out if isinstance(relevance_out, tuple) else (relevance_out,)
        r_in = _per_sample(relevance_in)
        r_out = sum((_per_sample(o) for o in outs), torch.zeros_like(r_in))
        values = [ledger.get(key, torch.zeros_like(r_in)) for key in ABSORBED]
        row = self.rows.get(name)
        if row is None:
            self.rows[name] = AccountRow(name, kind, repr(rule), r_in, r_out, *values)
            return
        row.relevance_in = row.relevance_in + r_in
        row.relevance_out = row.relevance_out + r_out
        row.bias = row.bias + values[0]
        row.stabilizer = row.stabilizer + values[1]
        row.rule_term = row.rule_term + values[2]
        row.calls += 1

    def concat(self, books: list[AccountBook]) -> list[AccountRow]:
        """Rows of several batch chunks (same model, same rows) joined along the batch."""
        names = list(self.rows)
        out = []
        for name in names:
            parts = [b.rows[name] for b in books]
            first = parts[0]
            joined = {
                f: torch.cat([getattr(p, f) for p in parts])
                for f in ("relevance_in", "relevance_out", "bias", "stabilizer", "rule_term")
            }
            out.append(AccountRow(name, first.kind, first.rule, **joined, calls=first.calls))
        return out
