"""Labelled images from a folder (``--padbias-dataset``): top-1/top-5 accuracy of a
classifier at an input size, to reproduce the slides' ImageNet 224 vs 225 table on the
user's own data (e.g. an ImageNet validation folder).

The folder is a torchvision ``ImageFolder``: one sub-folder of images per class. A
sub-folder is matched to the model's output index by the weights' category name
(``tabby``, ``tabby cat`` ...) when every folder name is a category; otherwise, when
there are exactly as many folders as outputs (ImageNet's ``n01440764`` ... folders), by
sorted folder order, which is ImageNet's class order.

Preprocessing is the standard evaluation transform scaled to the size: resize the shorter
side to ``size * 256 / 224`` and centre-crop ``size`` (224 -> 256/224, 225 -> 257/225).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .result import PadbiasError

#: Shorter side before the centre crop, relative to the crop (torchvision's 256 / 224).
RESIZE_RATIO = 256 / 224


@dataclass
class LabelledFolder:
    root: str
    samples: list[tuple[str, int]]  # (image path, model output index)
    classes: list[str]  # folder names, sorted
    matched_by: str  # "category name" or "folder order"
    skipped: list[str] = field(default_factory=list)  # folders not matched to an output


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def labelled_folder(root, categories=None, num_outputs=None, limit: int = 0, seed: int = 0) -> LabelledFolder:
    """The images of an ImageFolder ``root`` with the model's output index of each.

    ``limit`` > 0 keeps that many images, drawn with ``seed`` and stratified by class
    (round robin), so a small limit still spans the classes.
    """
    import numpy as np
    from torchvision.datasets import ImageFolder

    path = Path(root)
    if not path.is_dir():
        raise PadbiasError(f"--padbias-dataset {root}: not a folder; give an ImageFolder (one sub-folder of images per class)")
    try:
        folder = ImageFolder(str(path), loader=lambda p: p)
    except (FileNotFoundError, RuntimeError) as exc:
        raise PadbiasError(f"--padbias-dataset {root}: {str(exc).splitlines()[0]}; expected one sub-folder of images "
                           "(.jpg, .png, ...) per class") from None
    index = None
    matched_by = ""
    if categories:
        names = {_norm(c): i for i, c in enumerate(categories)}
        if all(_norm(c) in names for c in folder.classes):
            index = [names[_norm(c)] for c in folder.classes]
            matched_by = "category name"
    if index is None:
        outputs = num_outputs or (len(categories) if categories else None)
        if outputs is not None and len(folder.classes) == outputs:
            index, matched_by = list(range(outputs)), "folder order"
        else:
            unknown = [c for c in folder.classes if not categories or _norm(c) not in {_norm(x) for x in categories}][:5]
            raise PadbiasError(
                f"--padbias-dataset {root}: cannot match its {len(folder.classes)} class folders to the model's "
                f"{outputs if outputs is not None else 'unknown number of'} outputs: name the folders after the weights' "
                f"categories (unknown: {', '.join(unknown)}) or give one folder per output in class order "
                "(ImageNet's n01440764 ... n15075141)"
            )
    samples = [(p, index[c]) for p, c in folder.samples]
    if limit and limit < len(samples):
        rng = np.random.default_rng(seed)
        by_class: dict[int, list] = {}
        for s in samples:
            by_class.setdefault(s[1], []).append(s)
        queues = [[v[i] for i in rng.permutation(len(v))] for _k, v in sorted(by_class.items())]
        picked: list = []
        while len(picked) < limit:
            for q in queues:
                if q and len(picked) < limit:
                    picked.append(q.pop(0))
        samples = sorted(picked)
    return LabelledFolder(root=str(path), samples=samples, classes=list(folder.classes), matched_by=matched_by)


def load_batch(paths, size, mean, std):
    """Images at ``size`` (H, W) with the evaluation transform, normalised."""
    import torch
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    h, w = size
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                img = TF.pil_to_tensor(im.convert("RGB"))
        except OSError as exc:
            raise PadbiasError(f"--padbias-dataset: cannot read image {p}: {exc}") from None
        img = TF.resize(img, [round(min(h, w) * RESIZE_RATIO)], antialias=True)
        img = TF.center_crop(img, [h, w])
        out.append(TF.normalize(img.float().div(255.0), list(mean), list(std)))
    return torch.stack(out)


def evaluate(model, folder: LabelledFolder, size, mean, std, batch_size: int = 32):
    """``(top1_correct, top5_correct)``: boolean numpy arrays, one entry per sample."""
    import numpy as np
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    top1, top5 = [], []
    with torch.inference_mode():
        for start in range(0, len(folder.samples), batch_size):
            chunk = folder.samples[start : start + batch_size]
            logits = model(load_batch([p for p, _t in chunk], size, mean, std).to(device))
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise PadbiasError(f"the model's output is {type(logits).__name__}"
                                   f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else ''}; "
                                   "accuracy needs classification logits [N, classes]")
            targets = torch.tensor([t for _p, t in chunk], device=logits.device)
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1.append((best[:, 0] == targets).cpu().numpy())
            top5.append((best == targets[:, None]).any(dim=1).cpu().numpy())
    return np.concatenate(top1), np.concatenate(top5)
