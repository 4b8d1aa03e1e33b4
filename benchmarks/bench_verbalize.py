"""Verbalization on the planted shortcut: how often the sentence names the patch, and its cost.

For the patched "shirt" test images of Fashion-MNIST, a shortcut model (trained with the patch)
and its clean twin (same images, no patch) are explained by several methods; each map is
described by ``xai.verbalize.Verbalizer`` with the ground-truth areas (patch, garment). The table
gives the share of images whose first sentence says the model relies mostly on a region peaking
on the planted patch outside the shirt, the mean share of relevance quoted for that region, the
share of texts whose numbers and positions pass ``check`` against their own facts, and the time
per map of the verbalizer next to the time per map of the explainer (the floor it adds to).

Not collected by pytest. Needs Debian ``dataset-fashion-mnist``.

    python benchmarks/bench_verbalize.py [--n-images 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from xai.attributions import get
from xai.data.shortcuts import planted_shortcut_set, train_small_cnn
from xai.verbalize import PATCH_NAME, Verbalizer, check, ground_truth_labels

SHIRT = 6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {
        "shortcut": train_small_cnn(planted_shortcut_set(3000, shortcut_class=SHIRT)),
        "clean twin": train_small_cnn(
            planted_shortcut_set(3000, shortcut_class=SHIRT, planted=False)
        ),
    }
    test = planted_shortcut_set(args.n_images, split="test", shortcut_class=SHIRT, seed=1)
    pick = ((test.labels == SHIRT) & (test.groups == 1)).nonzero()[:, 0]
    x, y = test.inputs[pick], test.labels[pick]
    labels = ground_truth_labels(test, pick)
    verbalizer = Verbalizer()
    print(f"{len(pick)} patched 'shirt' test images (28x28), {args.threads} thread(s)")
    head = (
        f"{'model':<12}{'method':<22}{'names patch':>12}{'its share':>11}{'check ok':>10}"
        f"{'explain ms':>12}{'verbalize ms':>14}"
    )
    print(head)
    print("-" * len(head))
    for model_name, model in models.items():
        for name in ("saliency", "integrated_gradients", "grad_cam", "lrp"):
            method = get(name).create(model, layer="features")
            start = time.perf_counter()
            maps = method(x, target=y)
            explain = (time.perf_counter() - start) / len(x)
            start = time.perf_counter()
            found = verbalizer.describe(maps, "shirt", labels, objects=test.class_names)
            speak = (time.perf_counter() - start) / len(x)
            named = [
                d.regions[0]
                for d in found
                if d.regions and d.regions[0].label == PATCH_NAME and d.regions[0].outside
            ]
            share = sum(r.share for r in named) / len(named) if named else float("nan")
            ok = sum(check(d.text, d).ok for d in found) / len(found)
            print(
                f"{model_name:<12}{name:<22}{len(named) / len(found):>12.2f}{share:>11.3f}"
                f"{ok:>10.2f}{1000 * explain:>12.2f}{1000 * speak:>14.2f}"
            )


if __name__ == "__main__":
    main()
