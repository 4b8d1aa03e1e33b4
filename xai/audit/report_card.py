"""Method report card: every registered attribution method on the ground-truth sets.

For each set of :mod:`xai.data.shortcuts` and each method of the registry, one row with

* ``pointing_game`` (Zhang et al. 2016) and ``relevance_mass`` (Arras et al. 2022) against the
  ground truth: on the planted-shortcut set the **patch** (the model demonstrably relies on it:
  removing it breaks the class), on the background-swap set the **object** mask;
* ``deletion`` (lower is better) and ``insertion`` (higher is better) AUC (Petsiuk et al. 2018);
* ``randomization``: the mean Spearman similarity of the maps to the maps of a model whose top
  layers are re-initialized one after the other (Adebayo et al. 2018; lower = passes);
* ``seconds`` per image.

Run ``python -m xai.audit.report_card`` (options: ``--sets``, ``--methods``, ``--n-images``,
``--json``). Defaults are small (8 images per set, 10 deletion steps, the top 3 layers
randomized), a few minutes on a laptop CPU. A method that raises gets its error in the
``error`` column instead of numbers.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

__all__ = ["SETS", "format_table", "main", "report_card"]

SETS = ("shortcut", "background")
_COLUMNS = (
    "set",
    "method",
    "pointing_game",
    "relevance_mass",
    "deletion",
    "insertion",
    "randomization",
    "seconds",
    "error",
    "summary",
)


def _shortcut_case(n_images: int, seed: int) -> dict[str, Any]:
    from xai.data.shortcuts import planted_shortcut_set, train_small_cnn
    from xai.verbalize import ground_truth_labels

    train = planted_shortcut_set(3000, seed=seed)
    model = train_small_cnn(train, seed=seed)
    test = planted_shortcut_set(400, split="test", seed=seed + 1)
    cls = test.info["shortcut_class"]
    pick = ((test.labels == cls) & (test.groups == 1)).nonzero()[:n_images, 0]
    assert test.shortcut_masks is not None  # the planted patch is known exactly
    return {
        # grayscale: the salient relevance map sums |R| over the one channel
        "method_kwargs": {"salient_relevance": {"rgb_mode": "sum_abs"}},
        "model": model,
        "inputs": test.inputs[pick],
        "target": test.labels[pick],
        "masks": test.shortcut_masks[pick],
        "labels": ground_truth_labels(test, pick),
        "objects": test.class_names,
        "truth": "the planted patch",
        "title": "planted-shortcut set",
        "layer": "features",
        "tolerance": 2,
        "baseline": 0.0,
    }


def _background_case(n_images: int, seed: int) -> dict[str, Any]:
    from xai.data import load_mobilenet_v2
    from xai.data.shortcuts import background_swap_set, train_background_probe
    from xai.verbalize import ground_truth_labels

    train = background_swap_set(80, seed=seed)
    model = train_background_probe(train, load_mobilenet_v2())
    test = background_swap_set(n_images, seed=seed + 1)
    return {
        "model": model,
        "inputs": test.inputs,
        "target": test.labels,
        "masks": test.masks,
        "labels": ground_truth_labels(test),
        "objects": test.class_names,
        "truth": "the object",
        "title": "background-swap set",
        "layer": "features.18",
        "cheap": True,
        "tolerance": 7,
        "baseline": 0.0,
    }


_CASES: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "shortcut": _shortcut_case,
    "background": _background_case,
}


def _release_memory() -> None:
    """Hand freed memory back to the system between methods.

    Collects reference cycles, then, on glibc, calls ``malloc_trim(0)``: glibc keeps the freed
    heap pages of large tensors for reuse, so without it the resident memory between methods
    stays near the largest peak so far (measured on the background set, 4 images: 1.53 GB
    after Integrated Gradients without it, 0.91 GB with it). A no-op elsewhere.
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            pass


def _top_layers(model: nn.Module, k: int) -> list[str]:
    names = [n for n, m in model.named_modules() if n and hasattr(m, "reset_parameters")]
    return names[-k:]


def report_card(
    sets: Sequence[str] = SETS,
    methods: Sequence[str] | None = None,
    *,
    n_images: int = 8,
    n_steps: int = 10,
    n_randomized: int = 3,
    seed: int = 0,
    progress: bool = True,
    method_kwargs: dict[str, dict] | None = None,
    batch_size: int = 32,
    full: bool = False,
) -> dict[str, list]:
    """Score attribution methods on the ground-truth sets; returns a tidy table.

    Args:
        sets: which sets (``"shortcut"``: Fashion-MNIST planted patch and a small CNN trained
            here; ``"background"``: Tux Paint on textures and a MobileNetV2 linear probe). A set
            whose data or weights are missing is skipped with a note in ``error``.
        methods: registry names (default: every registered method).
        n_images: images per set.
        n_steps: deletion/insertion steps.
        n_randomized: top layers re-initialized by the randomization check.
        seed: seed of the data, the training and the methods.
        progress: show a ``tqdm`` bar over the methods.
        method_kwargs: extra constructor arguments per method name (e.g.
            ``{"integrated_gradients": {"n_steps": 16}}``).
        batch_size: inputs per forward pass of every method and metric (default 32): the
            peak memory does not grow with the number of masks, steps or samples.
        full: ``False`` (default) runs the perturbation methods with the cheap settings the
            demo uses (:data:`xai._presets.CHEAP_SETTINGS`: Score-CAM on ``features.16`` of
            MobileNetV2, Sobol grid 4 with 8 designs, ...); ``True`` with the papers' defaults.

    Returns:
        A dict of equal-length lists with the columns ``set``, ``method``, ``pointing_game``,
        ``relevance_mass``, ``deletion``, ``insertion``, ``randomization`` (means over the
        images; NaN where not computed), ``seconds`` (per image), ``error`` (``""`` or the
        message) and ``summary`` (the row in words, :mod:`xai.verbalize`).
        ``pandas.DataFrame(table)`` works.

    Raises:
        ValueError: an unknown set or method, or a bad count.
    """
    from tqdm.auto import tqdm

    from xai._presets import cheap_settings
    from xai.attributions import available, get
    from xai.metrics import (
        Deletion,
        Insertion,
        ModelParameterRandomization,
        PointingGame,
        RelevanceMassAccuracy,
    )

    for s in sets:
        if s not in _CASES:
            raise ValueError(f"unknown set {s!r}; choose from {list(_CASES)}")
    names = list(available("any")) if methods is None else list(methods)  # the sets are CNNs
    for name in names:
        get(name)  # raises with close matches
    for label, value in (
        ("n_images", n_images),
        ("n_steps", n_steps),
        ("n_randomized", n_randomized),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    extra = method_kwargs or {}
    table: dict[str, list] = {c: [] for c in _COLUMNS}

    def add(row: dict[str, Any]) -> None:
        for c in _COLUMNS:
            table[c].append(row.get(c, float("nan") if c not in ("error", "summary") else ""))

    for set_name in sets:
        try:
            case = _CASES[set_name](n_images, seed)
        except FileNotFoundError as err:
            add({"set": set_name, "method": "-", "error": f"skipped: {err}"})
            continue
        model, x, target, masks = case["model"], case["inputs"], case["target"], case["masks"]
        mprt = ModelParameterRandomization(layers=_top_layers(model, n_randomized), seed=seed)
        for name in tqdm(names, desc=f"report card: {set_name}", disable=not progress):
            row: dict[str, Any] = {"set": set_name, "method": name}
            method: Any = None
            maps: Any = None
            try:
                kwargs = {
                    "seed": seed,
                    "batch_size": batch_size,
                    "layer": case["layer"],
                    # the cheap settings are for 224 px MobileNetV2 (the background set); the
                    # 28 px shortcut set is cheap with the defaults
                    **({} if full or not case.get("cheap") else cheap_settings(name, model)),
                    **case.get("method_kwargs", {}).get(name, {}),
                    **extra.get(name, {}),
                }
                method = get(name).create(model, **kwargs)
                start = time.perf_counter()
                maps = method(x, target=target)
                row["seconds"] = (time.perf_counter() - start) / len(x)
                row["pointing_game"] = PointingGame(case["tolerance"])(
                    None, x, maps, masks=masks
                ).mean()
                row["relevance_mass"] = RelevanceMassAccuracy()(None, x, maps, masks=masks).mean()
                row["deletion"] = Deletion(
                    n_steps, baseline=case["baseline"], batch_size=batch_size
                )(model, x, maps, target).mean()
                row["insertion"] = Insertion(
                    n_steps, baseline=case["baseline"], batch_size=batch_size
                )(model, x, maps, target).mean()
                row["randomization"] = mprt(model, x, method, target).mean()
                row["summary"] = _summary(case, name, maps, row)
            except Exception as err:  # noqa: BLE001 - one failing method must not hide the rest
                row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            add(row)
            method = maps = None  # the method's maps and caches go before the next one
            _release_memory()
        del case, model, x, target, masks, mprt
        _release_memory()
    return table


def _summary(case: dict[str, Any], method: str, maps: Any, row: dict[str, Any]) -> str:
    """The row in words: mean relevance mass and pointing on the ground truth, then the first
    image's map described with its ground-truth areas (:mod:`xai.verbalize`).
    """
    from xai.verbalize import ENGLISH, Verbalizer, percent

    card = ENGLISH.card_row.format(
        method=method, set=case["title"], truth=case["truth"],
        mass=percent(row["relevance_mass"]), pointing=percent(row["pointing_game"]),
    )  # fmt: skip
    names = [case["objects"][int(t)] for t in case["target"][:1]]
    words = Verbalizer()(maps[:1], names, case["labels"][:1], objects=case["objects"])[0]
    return f"{card} First image: {words}"


def format_table(table: dict[str, list]) -> str:
    """The report card as aligned text (arrows: which direction is better)."""
    head = (
        f"{'set':<11}{'method':<24}{'pointing↑':>10}{'mass in↑':>10}{'deletion↓':>11}"
        f"{'insertion↑':>11}{'random.↓':>10}{'s/img':>9}"
    )
    lines = [head, "-" * len(head)]
    notes = []

    def num(v: float, width: int) -> str:
        return (
            f"{'–':>{width}}"
            if v is None or (isinstance(v, float) and math.isnan(v))
            else (f"{v:>{width}.3f}")
        )

    for i in range(len(table["set"])):
        if table["error"][i]:
            notes.append(f"{table['set'][i]}/{table['method'][i]}: {table['error'][i]}")
        lines.append(
            f"{table['set'][i]:<11}{table['method'][i]:<24}{num(table['pointing_game'][i], 10)}"
            f"{num(table['relevance_mass'][i], 10)}{num(table['deletion'][i], 11)}"
            f"{num(table['insertion'][i], 11)}{num(table['randomization'][i], 10)}"
            f"{num(table['seconds'][i], 9)}"
        )
    words = [s for s in table.get("summary", []) if s]
    if words:
        lines += ["", "in words:", *words]
    if notes:
        lines += ["", "errors / skipped:", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m xai.audit.report_card [--sets ...] [--methods ...] [--n-images N]``."""
    parser = argparse.ArgumentParser(
        prog="xai report-card",
        description="Score every attribution method on ground-truth sets (planted shortcut, "
        "background swap): pointing game, relevance mass, deletion/insertion AUC, "
        "randomization sanity check.",
    )
    parser.add_argument(
        "--sets", default=",".join(SETS), help="comma-separated: shortcut,background (default both)"
    )
    parser.add_argument(
        "--methods", default=None, help="comma-separated registry names (default: all)"
    )
    parser.add_argument("--n-images", type=int, default=8, help="images per set (default 8)")
    parser.add_argument("--n-steps", type=int, default=10, help="deletion/insertion steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass")
    parser.add_argument(
        "--full",
        action="store_true",
        help="the papers' settings (default: the demo's cheap settings)",
    )
    parser.add_argument("--json", default=None, help="also write the table to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    methods = (
        None if not args.methods else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    try:
        table = report_card(
            sets,
            methods,
            n_images=args.n_images,
            n_steps=args.n_steps,
            seed=args.seed,
            progress=not args.no_progress,
            batch_size=args.batch_size,
            full=args.full,
        )
    except ValueError as err:
        print(f"xai report-card: error: {err}", file=sys.stderr)
        return 2
    print(format_table(table))
    if args.json:
        clean = {
            k: [None if isinstance(v, float) and math.isnan(v) else v for v in col]
            for k, col in table.items()
        }
        with open(args.json, "w") as fh:
            json.dump(clean, fh, indent=1)
    ran = [e for e in table["error"] if not e.startswith("skipped")]
    return 0 if ran else 1


if __name__ == "__main__":
    sys.exit(main())
