"""Data splitting and checks of ``hf_egt.apps.data``: the held-out share of every group (a closed form), train and eval
disjoint and together every row, the same split for the same seed, per-group subsampling, and errors that name the
argument at fault."""

from __future__ import annotations

import pytest

from hf_egt.apps.data import check_columns, check_groups, group_counts, split_per_group, subsample_per_group

SIZES = {"a": 10, "b": 7, "c": 2, "d": 1, "e": 40}


def grouped(sizes=SIZES):
    from datasets import Dataset

    rows = [{"id": f"{group}{i}", "group": group} for group, size in sizes.items() for i in range(size)]
    rows = [rows[(7 * i) % len(rows)] for i in range(len(rows))]  # interleave the groups (60 rows: 7 is coprime)
    return Dataset.from_list(rows)


def ids(dataset) -> list[str]:
    return list(dataset["id"])


def expected_eval_rows(size: int, fraction: float) -> int:
    """round(fraction * size), at least one row held out and at least one kept (one row: held out)."""
    return min(max(1, round(fraction * size)), max(1, size - 1))


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_split_holds_out_the_fraction_of_every_group(fraction):
    dataset = grouped()
    train, eval_ = split_per_group(dataset, "group", fraction, seed=3)
    held_out = group_counts(eval_, "group")
    for group, size in SIZES.items():
        assert held_out[group] == expected_eval_rows(size, fraction), group
        assert group_counts(train, "group").get(group, 0) == size - held_out[group]


def test_split_is_disjoint_covers_every_row_and_keeps_the_order():
    dataset = grouped()
    train, eval_ = split_per_group(dataset, "group", 0.3, seed=0)
    assert not set(ids(train)) & set(ids(eval_))
    assert sorted(ids(train) + ids(eval_)) == sorted(ids(dataset))
    position = {row_id: index for index, row_id in enumerate(ids(dataset))}
    for side in (train, eval_):
        indices = [position[row_id] for row_id in ids(side)]
        assert indices == sorted(indices)


def test_split_is_determined_by_the_seed():
    dataset = grouped()
    splits = {seed: ids(split_per_group(dataset, "group", 0.3, seed=seed)[1]) for seed in range(4)}
    assert ids(split_per_group(dataset, "group", 0.3, seed=2)[1]) == splits[2]
    assert len({tuple(ids) for ids in splits.values()}) > 1  # the seed does choose the rows


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_refuses_a_fraction_outside_zero_one(fraction):
    with pytest.raises(ValueError, match=rf"`eval_fraction` must be in \(0, 1\), got {fraction}"):
        split_per_group(grouped(), "group", fraction)


def test_subsample_keeps_at_most_the_cap_of_each_group_in_order_and_by_seed():
    dataset = grouped()
    assert subsample_per_group(dataset, "group", None) is dataset
    kept = subsample_per_group(dataset, "group", 5, seed=1)
    assert group_counts(kept, "group") == {group: min(size, 5) for group, size in sorted(SIZES.items())}
    position = {row_id: index for index, row_id in enumerate(ids(dataset))}
    assert [position[row_id] for row_id in ids(kept)] == sorted(position[row_id] for row_id in ids(kept))
    assert ids(subsample_per_group(dataset, "group", 5, seed=1)) == ids(kept)
    assert len({tuple(ids(subsample_per_group(dataset, "group", 5, seed=s))) for s in range(4)}) > 1


def test_group_counts_count_labels_as_strings():
    from datasets import Dataset

    assert group_counts(Dataset.from_dict({"g": [2, 1, 2, 2]}), "g") == {"1": 1, "2": 3}


def test_check_groups_names_the_empty_group_and_the_split():
    dataset = grouped({"a": 3, "b": 2})
    check_groups(dataset, "group", ["a", "b"], "train")
    with pytest.raises(ValueError, match=r"Group\(s\) \['z'\] have no rows in the eval split \(column 'group'\)"):
        check_groups(dataset, "group", ["a", "z"], "eval")


def test_check_columns_names_the_argument_and_lists_the_columns():
    dataset = grouped({"a": 2})
    check_columns(dataset, {"group_column": "group", "text_column": "id"}, "mine")
    with pytest.raises(
        ValueError,
        match=r"`--text_column`: column 'text' is not in dataset 'mine'; valid columns are \['id', 'group'\]",
    ):
        check_columns(dataset, {"group_column": "group", "text_column": "text"}, "mine")
