"""Input checks shared by the estimators: clear errors that name the argument (and group) and what would be valid.

Shape, dtype, finiteness and group labels only; how many samples an estimator needs is ``validation``'s job."""

from __future__ import annotations

import numpy as np
import torch


def as_features(features, name: str, group=None) -> torch.Tensor:
    """A 2-D floating tensor of finite features (rows = samples), or a ``ValueError`` naming ``name``/``group``."""
    where = f"`{name}`" + (f" (group {group!r})" if group is not None else "")
    if isinstance(features, np.ndarray | list | tuple):
        features = torch.as_tensor(np.asarray(features))
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{where} must be a tensor, an array or a list of feature vectors, got {type(features)}.")
    if features.ndim == 1:
        features = features.unsqueeze(1)
    if features.ndim != 2:
        raise ValueError(f"{where} must have shape (num_samples, dim), got shape {tuple(features.shape)}.")
    if not features.is_floating_point():
        features = features.double()
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise ValueError(f"{where} has {bad} row(s) with NaN or infinite values; all features must be finite.")
    return features


def check_group_labels(groups, name: str, num_rows: int | None = None, features_name: str | None = None) -> list:
    """Group labels as a list, or a ``ValueError`` naming ``name`` when a label is missing (``None`` or NaN): a
    missing label would otherwise become a group of its own (``'None'``, ``'nan'``). With ``num_rows``, also one label
    per row of the features called ``features_name``."""
    if isinstance(groups, torch.Tensor | np.ndarray):
        groups = groups.tolist()
    if isinstance(groups, str):
        raise TypeError(f"`{name}` must be a sequence of group labels (one per row), got the string {groups!r}.")
    groups = [group.item() if isinstance(group, np.generic) else group for group in groups]
    missing = [i for i, group in enumerate(groups) if group is None or (isinstance(group, float) and group != group)]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise ValueError(
            f"`{name}` has {len(missing)} missing label(s) (None or NaN) at row(s) {shown}; give every row a group "
            "(a str or int), or drop the unlabelled rows."
        )
    if num_rows is not None and len(groups) != num_rows:
        raise ValueError(
            f"`{name}` has {len(groups)} labels but `{features_name}` has {num_rows} rows; give one group per row."
        )
    return groups


def check_not_empty(features, name: str) -> None:
    """At least one row, or a ``ValueError`` naming ``name`` (instead of an ``IndexError`` deep inside)."""
    if features is None or len(features) == 0:
        raise ValueError(f"`{name}` is empty; pass at least one sample per compared group and side.")


def check_pair(real: torch.Tensor, generated: torch.Tensor, group=None) -> None:
    """Real and generated features must live in the same space."""
    if real.shape[1] != generated.shape[1]:
        where = f" (group {group!r})" if group is not None else ""
        raise ValueError(
            f"`real` and `generated` features have different dimensions{where}: {real.shape[1]} vs "
            f"{generated.shape[1]}; both must come from the same feature extractor."
        )


def check_min_samples(features: torch.Tensor, minimum: int, name: str, why: str, group=None) -> None:
    """At least ``minimum`` rows, or a ``ValueError`` that says which estimator needs them."""
    if features.shape[0] < minimum:
        where = f"`{name}`" + (f" of group {group!r}" if group is not None else "")
        raise ValueError(f"{where} has {features.shape[0]} sample(s) but {why} needs at least {minimum}.")
