"""``hf_egt.apps.offline.split_by_person``: the built-in BOLD split keeps every person's sentences on one side, holds
out the fraction of each group's people, and is determined by the seed."""

from __future__ import annotations

import pytest

from hf_egt.apps.offline import split_by_person

PEOPLE = {"g1": 10, "g2": 3, "g3": 1}  # people per group, each with 1 to 4 sentences


def records():
    rows = []
    for group, people in PEOPLE.items():
        for person in range(people):
            rows += [
                {"group": group, "person": f"p{person}", "text": f"{group}-{person}-{k}"} for k in range(1 + person % 4)
            ]
    return rows


def people_of(rows):
    return {(row["group"], row["person"]) for row in rows}


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.7])
def test_a_person_is_on_one_side_and_the_fraction_of_each_groups_people_is_held_out(fraction):
    rows = records()
    train, test = split_by_person(rows, eval_fraction=fraction, seed=4)
    assert not people_of(train) & people_of(test)
    assert sorted(r["text"] for r in train + test) == sorted(r["text"] for r in rows)
    for group, people in PEOPLE.items():
        held_out = {p for g, p in people_of(test) if g == group}
        assert len(held_out) == max(1, round(fraction * people)), group
        held_rows = [r for r in rows if r["group"] == group and r["person"] in held_out]
        assert [r for r in test if r["group"] == group] == held_rows  # every sentence of a held-out person, in order


def test_split_by_person_is_determined_by_the_seed():
    rows = records()
    assert split_by_person(rows, seed=1) == split_by_person(rows, seed=1)
    assert len({frozenset(people_of(split_by_person(rows, seed=s)[1])) for s in range(5)}) > 1


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_split_by_person_refuses_a_fraction_outside_zero_one(fraction):
    with pytest.raises(ValueError, match=rf"`eval_fraction` must be in \(0, 1\), got {fraction}"):
        split_by_person(records(), eval_fraction=fraction)


def test_the_old_keyword_test_fraction_warns_and_still_splits():
    with pytest.warns(FutureWarning, match="test_fraction"):
        old = split_by_person(records(), test_fraction=0.5, seed=2)
    assert old == split_by_person(records(), eval_fraction=0.5, seed=2)
