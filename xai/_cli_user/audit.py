"""``xai audit``: the dataset audit of an ImageFolder tree (with optional masks and groups)."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from xai._cli_user.errors import CliError
from xai._cli_user.images import IMAGE_SUFFIXES, Preprocess, display_mean_std, preprocess_for
from xai._cli_user.models import check_layer, load_model, methods_for

__all__ = ["run_audit"]


class _FolderDataset:
    """ImageFolder-style items ``{"inputs", "labels"[, "masks"][, "groups"]}``."""

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        pre: Preprocess,
        masks: list[Path] | None = None,
        groups: list[int] | None = None,
    ) -> None:
        self.files, self.labels, self.pre = files, labels, pre
        self.masks, self.groups = masks, groups

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        item = {"inputs": self.pre.image(self.files[i]), "labels": self.labels[i]}
        if self.masks is not None:
            item["masks"] = self.pre.mask(self.masks[i])
        if self.groups is not None:
            item["groups"] = self.groups[i]
        return item


def _image_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    if not root.is_dir():
        raise CliError(f"--data {str(root)!r}: no such folder (expected DATA/<class>/<image>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise CliError(
            f"--data {str(root)!r} has no class sub-folders; lay it out as "
            "DATA/<class name>/<image> (torchvision ImageFolder)"
        )
    files, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(k)
    if not files:
        raise CliError(f"--data {str(root)!r}: no image files under its class folders")
    return classes, files, labels


def _mask_files(masks: Path, root: Path, files: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    missing: list[str] = []
    for f in files:
        rel = f.relative_to(root)
        cands = [masks / rel, *(masks / rel.with_suffix(s) for s in (".png", ".bmp", ".tif"))]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            missing.append(str(rel))
        else:
            out.append(hit)
    if missing:
        raise CliError(
            f"--masks {str(masks)!r}: no mask for {len(missing)} image(s), e.g. "
            f"{missing[0]!r}; give MASKS/<class>/<same name>.png for every image"
        )
    return out


def _group_ids(path: Path, root: Path, files: Sequence[Path]) -> tuple[list[int], list[str]]:
    if not path.is_file():
        raise CliError(f"--groups {str(path)!r}: no such file")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "group"]:
        rows = rows[1:]
    table = {}
    for row in rows:
        if len(row) < 2:
            raise CliError(
                f"--groups {str(path)!r}: every row must be 'path,group' "
                f"(relative to --data), got {row!r}"
            )
        table[Path(row[0].strip()).as_posix()] = row[1].strip()
    names = sorted(set(table.values()))
    ids, missing = [], []
    for f in files:
        rel = f.relative_to(root).as_posix()
        if rel not in table:
            missing.append(rel)
            continue
        ids.append(names.index(table[rel]))
    if missing:
        raise CliError(
            f"--groups {str(path)!r} has no row for {len(missing)} image(s), e.g. "
            f"{missing[0]!r}; add 'path,group' rows relative to --data"
        )
    return ids, names


def run_audit(args: argparse.Namespace) -> dict:
    """``xai audit``: the dataset audit of an ImageFolder tree; writes the report."""
    from xai.audit import audit, write_report

    model = load_model(args.model, args.weights, num_classes=args.num_classes, device=args.device)
    layer = check_layer(model, args.layer)
    method = args.method or ("saliency" if model.kind == "torchscript" else "grad_cam")
    methods_for(method, model)
    root = Path(args.data)
    classes, files, labels = _image_folder(root)
    masks = _mask_files(Path(args.masks), root, files) if args.masks else None
    groups, group_names = (
        _group_ids(Path(args.groups), root, files) if args.groups else (None, None)
    )
    pre = preprocess_for(args, model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "audit-checkpoint.pt"
    if args.restart and checkpoint.exists():
        checkpoint.unlink()
    data = _FolderDataset(files, labels, pre, masks, groups)
    try:
        result = audit(
            model.module,
            data,
            explainer=method,
            layer=layer,
            class_names=classes,
            group_names=group_names,
            target=args.target,
            batch_size=args.batch_size,
            checkpoint=checkpoint,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError) as err:
        raise CliError(f"audit: {str(err).splitlines()[0]}") from None
    mean, std = display_mean_std(pre)
    written = {}
    for fmt in args.format.split(","):
        fmt = fmt.strip()
        if fmt not in ("html", "markdown"):
            raise CliError(f"--format {fmt!r}: use html, markdown or html,markdown")
        written.update(
            {
                f"{fmt}_{k}": str(v)
                for k, v in write_report(
                    result, out, format=fmt, title=args.title, mean=mean, std=std
                ).items()
            }
        )
    return {
        "flags": result.flags,
        "files": written,
        "n_images": len(files),
        "checkpoint": str(checkpoint),
    }
