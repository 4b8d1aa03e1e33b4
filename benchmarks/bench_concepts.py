"""Speed of concept extraction (CRAFT) on MobileNetV2 at 224 px on the CPU.

Setting (the issue's): one class, 1,000 crops at 224 px, concepts at ``features.18``
(1280 channels, ReLU6), 10 NMF concepts (scikit-learn), Sobol importance with 32 designs
(``32 * (10 + 2) = 384`` evaluations of ``h`` per image). Offline there is one photo of the
class (scikit-image's ``chelsea``, 'Egyptian cat'), so the 1,000 crops are random 64 px crops
of it resized to 224 px (CRAFT: 64 px crops of 224 px images). Rows:

- ``activations``: forward passes of the crops up to ``features.18`` (the rest of the network
  is skipped) and spatial averaging, batch ``--batch-size`` (the fit time minus the
  factorization: it includes the check, on 2 images, that the model factors through the layer);
- ``factorization``: ``sklearn.decomposition.NMF`` on the ``1000 x 1280`` matrix;
- ``importance (sobol, photo)``: Sobol total indices on the photo's ``7 x 7`` coefficient map;
- ``importance (sobol, 64 crops)`` and ``importance (gradient x input, 64 crops)``: the same
  on 64 crops (their encoding, one forward each, is included);
- ``fit total``: the whole ``ConceptExtractor.fit`` (activations + factorization + the check
  that the model factors through the layer + the class prediction).

- ``floor`` (with ``--floor``): bare ``model.features`` forwards of the same crops, what the
  backbone alone costs.

Run: ``python benchmarks/bench_concepts.py [--n-crops 1000] [--threads 2] [--floor]``. The CPU may
be shared: the load average is printed before and after; compare rows, not machines.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


class TimedFactorizer:
    """Wraps a factorizer (the Factorizer protocol) and times its ``fit``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.requires_nonnegative = inner.requires_nonnegative
        self.seconds = 0.0

    @property
    def components(self):
        return self.inner.components

    def fit(self, activations):
        start = time.perf_counter()
        out = self.inner.fit(activations)
        self.seconds = time.perf_counter() - start
        return out

    def encode(self, activations):
        return self.inner.encode(activations)

    def decode(self, coefficients):
        return self.inner.decode(coefficients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-crops", type=int, default=1000)
    parser.add_argument("--n-concepts", type=int, default=10)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time bare model.features forwards of the same crops",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from xai.concepts import ConceptExtractor, NMFFactorizer, relative_reconstruction_error
    from xai.data import imagenet_categories, load_mobilenet_v2, preprocess, sample_photos_raw

    load_before = os.getloadavg()
    model = load_mobilenet_v2()
    image = preprocess(dict(sample_photos_raw(include_foolbox=False))["chelsea"], 224)
    factorizer = TimedFactorizer(NMFFactorizer(args.n_concepts, seed=0))
    ce = ConceptExtractor(
        model,
        "features.18",
        n_concepts=args.n_concepts,
        factorizer=factorizer,
        patches="random",
        n_patches=args.n_crops,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        seed=0,
    )

    rows: list[tuple[str, float]] = []
    start = time.perf_counter()
    ce.fit(image)
    fit_total = time.perf_counter() - start

    # fit = activations + factorization + two tiny checks (2 images): the rest is collection.
    rows.append(("activations (fit - factorization)", fit_total - factorizer.seconds))
    rows.append(("factorization (sklearn NMF)", factorizer.seconds))

    start = time.perf_counter()
    imp = ce.importance(method="sobol")
    rows.append(("importance (sobol, photo)", time.perf_counter() - start))
    crops = ce.crops(ce.patches_[:64])
    start = time.perf_counter()
    ce.importance(crops, method="sobol")
    rows.append(("importance (sobol, 64 crops)", time.perf_counter() - start))
    start = time.perf_counter()
    ce.importance(crops, method="gradient_input")
    rows.append(("importance (gradient x input, 64 crops)", time.perf_counter() - start))
    rows.append(("fit total", fit_total))
    if args.floor:  # the floor: the backbone alone on the same crops, no hooks, no pooling
        start = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(ce.patches_), args.batch_size):
                model.features(ce.crops(ce.patches_[s : s + args.batch_size]))
        rows.append(("floor: bare model.features forwards", time.perf_counter() - start))
    total = fit_total + rows[2][1]

    err = relative_reconstruction_error(ce.activations_, ce.coefficients_, ce.concepts_)
    print(
        f"MobileNetV2 features.18, class '{imagenet_categories()[ce.target_]}', "
        f"{args.n_crops} crops of {args.patch_size} px at 224 px, {args.n_concepts} concepts, "
        f"torch threads {torch.get_num_threads()}, load average before "
        f"{load_before[0]:.1f}"
    )
    print(f"{'step':42s} {'seconds':>8s}", flush=True)
    for name, seconds in rows:
        print(f"{name:42s} {seconds:8.2f}")
    print(f"{'fit + sobol importance (photo): total':42s} {total:8.2f}   (target <= 60 s)")
    print(
        f"relative reconstruction error {err:.3f}; top concepts by Sobol "
        f"{imp.argsort(descending=True)[:3].tolist()}; load average after "
        f"{os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
