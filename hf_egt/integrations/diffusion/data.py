"""Image datasets with a group column, and the offline ``digits-imbalanced`` set.

``digits-imbalanced`` is scikit-learn's ``load_digits()`` (1797 images of 8x8 pixels with 17 grey levels 0..16, ten
classes of 174 to 183 images) in which the classes :data:`DIGITS_MINORITY_CLASSES` (2, 5 and 8) are subsampled to
:data:`DIGITS_MINORITY_FRACTION` (15 %: 27, 27 and 26 images) with ``numpy.random.default_rng(DIGITS_SEED=0)``; the
other seven classes are kept whole (1264 + 80 = 1344 images in all). The group of an image is its class (column
``group``, the default ``--group_column``); the image is in column ``image`` (a greyscale ``PIL`` image). Pixels are
scaled to [-1, 1] and resized to ``--resolution`` (8 keeps the native size).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

DIGITS_DATASET_NAME = "digits-imbalanced"
DIGITS_MINORITY_CLASSES = (2, 5, 8)
DIGITS_MINORITY_FRACTION = 0.15
DIGITS_SEED = 0


def digits_imbalanced_arrays(
    minority_classes: Sequence[int] = DIGITS_MINORITY_CLASSES,
    minority_fraction: float = DIGITS_MINORITY_FRACTION,
    seed: int = DIGITS_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (``uint8`` in 0..255, shape ``(n, 8, 8)``) and labels of the imbalanced digits split (see module doc)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    rng = np.random.default_rng(seed)
    keep = np.ones(len(labels), dtype=bool)
    for label in minority_classes:
        members = np.flatnonzero(labels == label)
        kept = rng.choice(members, size=max(1, round(minority_fraction * len(members))), replace=False)
        keep[members] = False
        keep[kept] = True
    pixels = np.round(images[keep] * (255.0 / 16.0)).astype(np.uint8)
    return pixels, labels[keep].astype(np.int64)


def load_digits_imbalanced(**kwargs):
    """The ``digits-imbalanced`` split as a ``datasets.Dataset`` with columns ``image`` (PIL, mode ``L``) and
    ``group`` (int, the digit)."""
    import datasets

    pixels, labels = digits_imbalanced_arrays(**kwargs)
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "group": labels.tolist()},
        features=datasets.Features({"image": datasets.Image(), "group": datasets.Value("int64")}),
    )


def load_image_dataset(dataset_name: str, split: str = "train", cache_dir: str | None = None):
    """``digits-imbalanced``, a folder written by ``Dataset.save_to_disk``, or what ``datasets.load_dataset``
    takes: a Hub dataset id or a local folder (images with an optional ``metadata.csv``: ``imagefolder``)."""
    import datasets

    if dataset_name == DIGITS_DATASET_NAME:
        return load_digits_imbalanced()
    if os.path.exists(os.path.join(dataset_name, "state.json")):
        return datasets.load_from_disk(dataset_name)
    return datasets.load_dataset(dataset_name, split=split, cache_dir=cache_dir)


def check_columns(column_names: Sequence[str], **columns: str | None) -> None:
    """Raise a ``ValueError`` naming the argument whose column is missing and the columns that exist."""
    for argument, column in columns.items():
        if column is not None and column not in column_names:
            raise ValueError(
                f"`--{argument}`={column!r} is not a column of the dataset; columns are {list(column_names)}."
            )


def group_labels_of(dataset, group_column: str) -> list:
    """Sorted distinct values of the group column (class names when it is a ``ClassLabel``)."""
    feature = dataset.features[group_column]
    names = getattr(feature, "names", None)
    if names is not None:
        return list(range(len(names)))
    return sorted(set(dataset[group_column]))


def image_to_tensor(image: Image.Image, resolution: int, channels: int, center_crop: bool = True) -> torch.Tensor:
    """A PIL image as a ``(channels, resolution, resolution)`` float tensor in [-1, 1] (resize shorter side, crop)."""
    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size != (width, height):
        image = image.resize(size, Image.Resampling.BILINEAR)
    left = (size[0] - resolution) // 2 if center_crop else 0
    top = (size[1] - resolution) // 2 if center_crop else 0
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32).reshape(resolution, resolution, -1) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def make_transform(
    image_column: str,
    group_column: str,
    resolution: int,
    channels: int,
    group_ids: dict,
    tokenize: Callable[[list[str]], torch.Tensor] | None = None,
    caption_column: str | None = None,
    center_crop: bool = True,
) -> Callable[[dict], dict]:
    """A ``datasets`` batch transform returning ``pixel_values``, ``group_ids`` and, with a tokenizer, ``input_ids``."""

    def transform(batch: dict) -> dict:
        out = {
            "pixel_values": [
                image_to_tensor(image, resolution, channels, center_crop) for image in batch[image_column]
            ],
            "group_ids": [group_ids[value] for value in batch[group_column]],
        }
        if tokenize is not None:
            out["input_ids"] = list(tokenize(list(batch[caption_column])))
        return out

    return transform


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` (and ``input_ids``); group ids as a ``LongTensor``."""
    batch = {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous(),
        "group_ids": torch.tensor([e["group_ids"] for e in examples], dtype=torch.long),
    }
    if "input_ids" in examples[0]:
        batch["input_ids"] = torch.stack([e["input_ids"] for e in examples])
    return batch


def dataset_sha256(dataset, columns: Sequence[str]) -> str:
    """A content hash of ``columns`` over every row of ``dataset`` (image bytes or paths, labels, captions): what a
    resumed run compares to tell the same training images from other ones."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for batch in dataset.select_columns(list(columns)).with_format("arrow").iter(batch_size=1024):
        for column in columns:
            for value in batch.column(column).to_pylist():
                if isinstance(value, dict):  # an `Image` feature: encoded bytes, or a path
                    value = value.get("bytes") or value.get("path")
                digest.update(value if isinstance(value, bytes) else json.dumps(value, default=str).encode())
                digest.update(b"\x00")
    return digest.hexdigest()
