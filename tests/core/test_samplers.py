"""Group samplers: composition, determinism given (seed, epoch), and use by EGTTrainer (resume, two processes)."""

import json
from collections import Counter

import pytest
import torch

from hf_egt.core.samplers import (
    BalancedGroupSampler,
    HomogeneousGroupSampler,
    StratifiedGroupSampler,
    TemperatureGroupSampler,
    balanced_example_weights,
    group_sampler,
    sampling_shares,
    stratified_quotas,
    temperature_example_weights,
)
from tests.conftest import accelerate_launch

GROUP_IDS = [0] * 30 + [1] * 9 + [2] * 3  # imbalanced, 42 rows


def test_balanced_weights_are_n_over_group_size():
    weights = balanced_example_weights(torch.tensor(GROUP_IDS), 3)
    assert weights.tolist() == pytest.approx([42 / 30] * 30 + [42 / 9] * 9 + [42 / 3] * 3)
    per_group = [weights[torch.tensor(GROUP_IDS) == g].sum().item() for g in range(3)]
    assert per_group == pytest.approx([42.0] * 3)  # each group carries the same total weight


@pytest.mark.parametrize("exponent", [0.0, 0.3, 0.5, 1.0])
def test_temperature_weights_give_each_group_n_to_the_alpha(exponent):
    ids = torch.tensor(GROUP_IDS)
    weights = temperature_example_weights(ids, 3, exponent)
    per_group = torch.stack([weights[ids == g].sum() for g in range(3)])
    sizes = torch.tensor([30.0, 9.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(per_group / per_group.sum(), sizes**exponent / (sizes**exponent).sum())
    if exponent == 0.0:  # the balanced sampler is the alpha = 0 case
        torch.testing.assert_close(weights, balanced_example_weights(ids, 3))


def test_temperature_sampler_draws_groups_in_proportion_to_n_to_the_alpha():
    sampler = group_sampler("temperature", GROUP_IDS, 3, seed=0, exponent=0.5)
    assert isinstance(sampler, TemperatureGroupSampler)
    draws = []
    for epoch in range(100):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    expected = torch.tensor([30.0, 9.0, 3.0]).sqrt()
    expected = (4200 * expected / expected.sum()).tolist()  # ~2208, 1210, 699
    counts = Counter(GROUP_IDS[i] for i in draws)
    for group in range(3):  # binomial std <= 33: 5 std
        assert abs(counts[group] - expected[group]) < 165


@pytest.mark.parametrize("exponent", [-1.5, 1.5])
def test_exponent_outside_minus_one_one_is_refused(exponent):
    with pytest.raises(ValueError, match=r"`group_sampling_exponent` must be in \[-1, 1\]"):
        TemperatureGroupSampler(GROUP_IDS, 3, exponent=exponent)
    with pytest.raises(ValueError, match=r"`group_sampling_exponent` must be in \[-1, 1\]"):
        StratifiedGroupSampler(GROUP_IDS, step_size=8, exponent=exponent)


def test_exponent_none_is_each_samplings_default():
    assert group_sampler("temperature", GROUP_IDS, 3, seed=0).weights.tolist() == pytest.approx(
        temperature_example_weights(torch.tensor(GROUP_IDS), 3, 0.5).tolist()
    )
    default = group_sampler("stratified", GROUP_IDS, 3, seed=0, step_size=8)
    assert default.shares is None  # equal shares, the stream stratified sampling always drew
    assert list(default) == list(group_sampler("stratified", GROUP_IDS, 3, seed=0, step_size=8, exponent=0.0))


def test_balanced_sampler_draws_groups_uniformly_with_replacement():
    sampler = BalancedGroupSampler(GROUP_IDS, 3, seed=0)
    draws = []
    for epoch in range(100):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    assert len(sampler) == 42 and len(draws) == 4200
    counts = Counter(GROUP_IDS[i] for i in draws)
    for group in range(3):  # binomial(4200, 1/3): std ~31; 5 std
        assert abs(counts[group] - 1400) < 155
    assert len(set(draws) & set(range(39, 42))) == 3 and Counter(draws).most_common(1)[0][1] > 100  # replacement


@pytest.mark.parametrize("sampler_class", ["balanced", "stratified", "homogeneous"])
def test_stream_is_a_function_of_seed_and_epoch(sampler_class):
    def stream(seed, epoch):
        sampler = group_sampler(sampler_class, GROUP_IDS, 3, seed=seed, step_size=8, batch_size=4)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert stream(0, 0) == stream(0, 0)
    assert stream(0, 1) == stream(0, 1)
    assert stream(0, 0) != stream(0, 1)
    assert stream(0, 0) != stream(1, 0)


def test_stratified_every_step_holds_every_group_with_its_quota():
    sampler = StratifiedGroupSampler(GROUP_IDS, step_size=8, num_groups=3, seed=3)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 48  # whole steps covering the 42 rows
    for start in range(0, len(indices), 8):
        counts = Counter(GROUP_IDS[i] for i in indices[start : start + 8])
        assert sorted(counts.values()) == [2, 3, 3]  # 8 // 3 each, plus one for 8 % 3 groups
    # within a group, examples come without replacement until the group is used up
    small = [i for i in indices if GROUP_IDS[i] == 2]
    assert sorted(small[:3]) == [39, 40, 41]


@pytest.mark.parametrize("exponent", [1.0, 0.5, -0.5])
def test_stratified_shares_hold_each_step_to_n_to_the_alpha(exponent):
    """Each step holds floor or ceil of p_g * step_size of group g, exactly step_size in all, and p_g * step_size on
    average (systematic sampling of the fractions left)."""
    sampler = StratifiedGroupSampler(GROUP_IDS, step_size=8, num_groups=3, seed=1, exponent=exponent)
    sizes = torch.tensor([30.0, 9.0, 3.0], dtype=torch.float64)
    expected = 8 * sizes**exponent / (sizes**exponent).sum()
    torch.testing.assert_close(sampler.shares * 8, expected)
    steps = []
    for epoch in range(300):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        steps += [Counter(GROUP_IDS[i] for i in indices[start : start + 8]) for start in range(0, len(indices), 8)]
    per_step = torch.tensor([[step[g] for g in range(3)] for step in steps], dtype=torch.float64)
    assert (per_step.sum(dim=1) == 8).all()
    assert ((per_step >= expected.floor()) & (per_step <= expected.ceil())).all()
    # 1,800 steps: the std of a group's mean count is at most 0.5 / sqrt(1800) ~ 0.012; 5 std
    assert (per_step.mean(dim=0) - expected).abs().max() < 0.06


def test_stratified_below_zero_gives_small_groups_more_than_equal():
    shares = sampling_shares(torch.tensor(GROUP_IDS), 3, -0.5)
    assert shares[2] > 1 / 3 > shares[0] and shares[2] > shares[1] > shares[0]  # the smallest group most
    quotas = stratified_quotas(3, 4, torch.Generator().manual_seed(0), shares)
    assert quotas.sum() == 4
    # unequal shares need no room for every group in a step: a group is in it with probability p_g * step_size
    assert len(list(StratifiedGroupSampler(GROUP_IDS, step_size=2, exponent=-0.5))) == 42


def test_stratified_quotas_and_errors():
    quotas = stratified_quotas(4, 10, torch.Generator().manual_seed(0))
    assert quotas.sum() == 10 and sorted(quotas.tolist()) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match="step_size.*3 groups"):
        StratifiedGroupSampler(GROUP_IDS, step_size=2)
    with pytest.raises(ValueError, match="no example"):
        BalancedGroupSampler([0, 2], num_groups=3)
    with pytest.raises(ValueError, match="group_sampling"):
        group_sampler("uniform", GROUP_IDS, 3, seed=0)
    assert group_sampler("natural", GROUP_IDS, 3, seed=0) is None


def test_homogeneous_every_micro_batch_is_one_group_and_groups_take_turns():
    sampler = HomogeneousGroupSampler(GROUP_IDS, batch_size=4, num_groups=3, seed=3)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 48  # 4 rounds of one batch of 4 per group cover the 42 rows
    batches = [indices[start : start + 4] for start in range(0, len(indices), 4)]
    groups = [{GROUP_IDS[i] for i in batch} for batch in batches]
    assert all(len(found) == 1 for found in groups)  # every micro-batch holds one group
    for start in range(0, len(groups), 3):  # every round gives each group one micro-batch
        assert sorted(found.pop() for found in groups[start : start + 3]) == [0, 1, 2]
    orders = {tuple(GROUP_IDS[batch[0]] for batch in batches[start : start + 3]) for start in range(0, 12, 3)}
    assert len(orders) > 1  # the order within a round is drawn, not fixed
    # within a group, examples come without replacement until the group is used up, then from a reshuffled cycle
    per_group = {g: [i for i in indices if GROUP_IDS[i] == g] for g in range(3)}
    assert len(per_group[0]) == 16 and len(set(per_group[0])) == 16
    assert len(per_group[1]) == 16 and sorted(per_group[1][:9]) == list(range(30, 39))
    small = per_group[2]
    for start in range(0, 15, 3):
        assert sorted(small[start : start + 3]) == [39, 40, 41]


def test_homogeneous_needs_its_batch_size():
    with pytest.raises(ValueError, match="Homogeneous sampling needs `batch_size`"):
        group_sampler("homogeneous", GROUP_IDS, 3, seed=0, step_size=8)
    with pytest.raises(ValueError, match="`batch_size` must be at least 1"):
        HomogeneousGroupSampler(GROUP_IDS, batch_size=0)


# ------------------------------------------------------------------------------------------------ with EGTTrainer
def stratified_trainer(tmp_path, **overrides):
    from hf_egt import EGTTrainer
    from tests.integrations.trainer.test_egt_trainer import config, lora
    from tests.trainer_utils import group_dataset, tiny_llama

    args = config(tmp_path, **{"group_sampling": "stratified", "per_device_train_batch_size": 4, **overrides})
    return EGTTrainer(
        model=tiny_llama(), args=args, train_dataset=group_dataset({"a": 20, "b": 3}, seed=0), peft_config=lora()
    )


def test_trainer_stratified_batches_hold_every_group(tmp_path):
    trainer = stratified_trainer(tmp_path)
    labels = trainer.train_dataset["group"]
    loader = trainer.get_train_dataloader()
    assert len(loader) == 6  # 23 rows -> 24 = 6 steps of 4
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            assert sorted(batch["group"].tolist()) == [0, 0, 1, 1]  # "b" (3 rows) is in every batch of 4
    assert {labels[i] for i in range(len(labels))} == {"a", "b"}


def test_trainer_homogeneous_batches_hold_one_group(tmp_path):
    trainer = stratified_trainer(tmp_path, group_sampling="homogeneous")
    loader = trainer.get_train_dataloader()
    assert len(loader) == 6  # 23 rows -> 3 rounds of one batch of 4 per group
    for epoch in range(2):
        loader.set_epoch(epoch)
        found = [set(batch["group"].tolist()) for batch in loader]
        assert all(len(groups) == 1 for groups in found)
        assert sorted(groups.pop() for groups in found) == [0, 0, 0, 1, 1, 1]


def test_trainer_resume_with_stratified_sampling_is_exact(tmp_path):
    from tests.integrations.trainer.test_egt_trainer import assert_same_params, lora_params

    straight = stratified_trainer(tmp_path / "straight", max_steps=8)  # crosses an epoch boundary (6 steps)
    straight.train()
    first = stratified_trainer(tmp_path / "resumed", max_steps=4, save_strategy="steps", save_steps=4)
    first.train()
    resumed = stratified_trainer(tmp_path / "resumed", max_steps=8)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))
    assert_same_params(lora_params(straight), lora_params(resumed))
    torch.testing.assert_close(straight.group_objective.weights, resumed.group_objective.weights)


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["balanced", "stratified", "homogeneous"])
def test_two_processes_draw_their_own_parts_of_one_stream(tmp_path, sampling):
    """Under accelerate, each process gets its own batches and the two together are the single-process stream."""
    output = tmp_path / "batches.json"
    accelerate_launch("sampler_two_processes.py", sampling, str(output))
    per_rank = json.loads(output.read_text())
    sampler = group_sampler(sampling, GROUP_IDS, 3, seed=5, step_size=8, batch_size=4)
    per_epoch = len(per_rank["0"]) // 2
    for epoch in range(2):
        sampler.set_epoch(epoch)
        stream = list(sampler)
        batches = [stream[i : i + 4] for i in range(0, len(stream) - len(stream) % 8, 4)]  # whole steps of 2 x 4
        for rank in (0, 1):
            mine = per_rank[str(rank)][epoch * per_epoch : (epoch + 1) * per_epoch]
            assert mine[: len(batches) // 2] == batches[rank::2], (epoch, rank)
    if sampling == "stratified":  # each optimizer step (one batch per process) holds every group
        for first, second in zip(per_rank["0"], per_rank["1"]):
            assert {GROUP_IDS[i] for i in first + second} == {0, 1, 2}
    if sampling == "homogeneous":  # each process's batch holds one group
        assert all(len({GROUP_IDS[i] for i in batch}) == 1 for rank in "01" for batch in per_rank[rank])
