"""GroupObjective's robust options against hand computations: loss estimates that survive absent groups, the weight
floor, the excess loss, held-out updates (`observe`) and the adjustment with training-set group sizes."""

import math

import pytest
import torch

from hf_egt import GroupObjective
from hf_egt.core.objective import excess_losses, mix_with_uniform, track_group_losses


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_batch_estimate_shrinks_an_absent_group_and_last_keeps_its_score():
    eta = 0.5
    batch = GroupObjective(num_groups=2, group_step_size=eta, group_loss_estimate="batch")
    last = GroupObjective(num_groups=2, group_step_size=eta, group_loss_estimate="last")
    for objective in (batch, last):
        objective(torch.tensor([3.0, 1.0]), torch.tensor([0, 1]))  # both present: L = (3, 1)
        objective(torch.tensor([2.0]), torch.tensor([1]))  # group 0 absent, group 1 scores 2
    # reference: the absent group's loss counts as 0
    assert batch.weights.tolist() == pytest.approx(softmax([eta * 3, eta * (1 + 2)]))
    # DoReMi: the absent group keeps its last score 3
    assert last.weights.tolist() == pytest.approx(softmax([eta * (3 + 3), eta * (1 + 2)]))


def test_ema_estimate_tracks_present_groups_only():
    eta, decay = 0.5, 0.75
    objective = GroupObjective(num_groups=3, group_step_size=eta, group_loss_estimate="ema", group_ema_decay=decay)
    objective(torch.tensor([4.0, 2.0]), torch.tensor([0, 1]))  # group 2 never seen: left out of the update
    assert objective.weights[2] == pytest.approx(objective.weights[1] * math.exp(-eta * 2.0))
    objective(torch.tensor([0.0]), torch.tensor([0]))  # estimates: g0 = .75*4 + .25*0 = 3, g1 stays 2
    expected = softmax([eta * (4 + 3), eta * (2 + 2), 0.0])
    assert objective.weights.tolist() == pytest.approx(expected)


def test_weight_floor_is_dorem_mixing_with_uniform():
    eta, floor = 2.0, 0.2
    objective = GroupObjective(num_groups=2, group_step_size=eta, group_weight_floor=floor)
    objective(torch.tensor([5.0, 0.0]), torch.tensor([0, 1]))
    q = softmax([eta * 5, 0.0])
    first = [(1 - floor) * w + floor / 2 for w in q]
    assert objective.weights.tolist() == pytest.approx(first)
    objective(torch.tensor([5.0, 0.0]), torch.tensor([0, 1]))  # the next update starts from the mixed weights
    q = softmax([math.log(first[0]) + eta * 5, math.log(first[1])])
    assert objective.weights.tolist() == pytest.approx([(1 - floor) * w + floor / 2 for w in q])
    for _ in range(50):
        objective(torch.tensor([50.0, 0.0]), torch.tensor([0, 1]))
    assert objective.weights.min() >= floor / 2 - 1e-12
    assert mix_with_uniform(torch.tensor([1.0, 0.0, 0.0, 0.0]), 0.4).tolist() == pytest.approx([0.7, 0.1, 0.1, 0.1])


def test_floor_applies_to_ema_and_worst_weights():
    worst = GroupObjective(num_groups=2, objective="worst", group_weight_floor=0.5)
    worst(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))
    assert worst.weights.tolist() == pytest.approx([0.25, 0.75])


def test_excess_loss_drives_the_update_but_not_the_training_loss():
    eta = 0.5
    losses = torch.tensor([3.0, 1.0, 2.0, 5.0], requires_grad=True)
    reference = torch.tensor([1.0, 2.0, 2.5, 1.0])  # excess clip(l - ref, 0) = 2, 0, 0, 4
    groups = torch.tensor([0, 0, 1, 1])
    tokens = torch.tensor([1.0, 3.0, 1.0, 1.0])
    objective = GroupObjective(num_groups=2, group_step_size=eta)
    objective.begin_window([groups], [tokens])
    out = objective.window_loss(losses, groups, tokens, reference_losses=reference)
    # the training loss: uniform weights on the raw token-mean group losses (3 + 3) / 4 and (2 + 5) / 2
    assert out.loss.item() == pytest.approx(0.5 * (3 + 3) / 4 + 0.5 * (2 + 5) / 2)
    out.loss.backward()
    assert losses.grad.tolist() == pytest.approx([0.5 / 4, 0.5 * 3 / 4, 0.25, 0.25])
    window = objective.end_window()
    assert window.group_losses.tolist() == pytest.approx([1.5, 3.5])  # logged: the raw losses
    excess = [(2 * 1 + 0 * 3) / 4, (0 + 4) / 2]  # the update: token-weighted mean excess per group
    assert objective.weights.tolist() == pytest.approx(softmax([eta * e for e in excess]))
    assert excess_losses(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])).tolist() == [0.0, 2.0]


def test_excess_loss_window_is_split_invariant_and_single_batch_agrees():
    torch.manual_seed(0)
    losses, reference = torch.rand(12) * 4, torch.rand(12) * 4
    groups, tokens = torch.randint(0, 3, (12,)), torch.randint(1, 5, (12,)).double()
    whole, split = (GroupObjective(num_groups=3, group_step_size=0.7) for _ in range(2))
    whole.begin_window([groups], [tokens])
    whole.window_loss(losses, groups, tokens, reference_losses=reference)
    whole.end_window()
    parts = [slice(0, 5), slice(5, 12)]
    split.begin_window([groups[p] for p in parts], [tokens[p] for p in parts])
    for p in parts:
        split.window_loss(losses[p], groups[p], tokens[p], reference_losses=reference[p])
    split.end_window()
    torch.testing.assert_close(whole.weights, split.weights)
    single = GroupObjective(num_groups=3, group_step_size=0.7)
    single(losses, groups, tokens, reference_losses=reference)
    torch.testing.assert_close(single.weights, whole.weights)


def test_reference_losses_for_every_micro_batch_or_none():
    objective = GroupObjective(num_groups=2)
    objective.begin_window([torch.tensor([0]), torch.tensor([1])])
    objective.window_loss(torch.tensor([1.0]), torch.tensor([0]), reference_losses=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="every micro-batch"):
        objective.window_loss(torch.tensor([1.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="reference_losses"):
        GroupObjective(num_groups=2)(torch.tensor([1.0, 2.0]), [0, 1], reference_losses=torch.tensor([1.0]))


def reference_adjusted_step(adv_probs, losses, group_idx, n_groups, step_size, adj, train_counts):
    """kohpangwei/group_DRO `LossComputer` with `adj` and training-set `group_counts`, written out literally."""
    group_map = (group_idx == torch.arange(n_groups).unsqueeze(1).long()).double()
    group_count = group_map.sum(1)
    group_loss = (group_map @ losses.view(-1)) / (group_count + (group_count == 0).float())
    adjusted_loss = group_loss + adj / torch.sqrt(train_counts)
    adv_probs = adv_probs * torch.exp(step_size * adjusted_loss)
    return adv_probs / adv_probs.sum()


def test_adjustment_with_training_set_sizes_matches_the_reference_for_every_group():
    sizes = torch.tensor([100.0, 4.0, 25.0])
    objective = GroupObjective(num_groups=3, group_step_size=0.3, group_adjustment=2.0, group_sizes=sizes.tolist())
    adv_probs = torch.full((3,), 1 / 3, dtype=torch.float64)
    torch.manual_seed(0)
    for step in range(5):
        groups = torch.tensor([0, 0, 2]) if step % 2 else torch.tensor([0, 1, 1])  # a group is absent every step
        losses = torch.rand(3, dtype=torch.float64) * 3
        objective(losses, groups)
        adv_probs = reference_adjusted_step(adv_probs, losses, groups, 3, 0.3, 2.0, sizes.double())
        torch.testing.assert_close(objective.weights, adv_probs)
    with pytest.raises(ValueError, match="group_sizes"):
        GroupObjective(num_groups=3, group_sizes=[1, 2])
    with pytest.raises(ValueError, match="group_sizes"):
        GroupObjective(num_groups=2, group_sizes=[0, 2])


def test_observe_updates_from_outside_losses_and_training_windows_can_skip_the_update():
    objective = GroupObjective(num_groups=2, group_step_size=0.5, group_loss_estimate="last")
    objective.begin_window([torch.tensor([0, 1])])
    objective.window_loss(torch.tensor([9.0, 1.0]), torch.tensor([0, 1]))
    objective.end_window(update=False)
    assert objective.weights.tolist() == pytest.approx([0.5, 0.5])  # the training losses did not move the weights
    weights = objective.observe(torch.tensor([1.0, 3.0]), torch.tensor([10.0, 0.0]))  # group 1 absent from this one
    assert weights.tolist() == pytest.approx(softmax([0.5, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        objective.observe(torch.tensor([1.0]), torch.tensor([1.0]))


def test_track_group_losses_pure_function():
    estimates, seen = track_group_losses(
        torch.tensor([1.0, 2.0, 0.0]),
        torch.tensor([True, True, False]),
        torch.tensor([3.0, 9.0, 5.0]),
        torch.tensor([True, False, True]),
        0.5,
    )
    assert estimates.tolist() == [2.0, 2.0, 5.0]
    assert seen.tolist() == [True, True, True]


def test_state_round_trip_keeps_the_robust_settings(tmp_path):
    objective = GroupObjective(
        groups=["a", "b"],
        group_step_size=0.2,
        group_loss_estimate="ema",
        group_weight_floor=0.1,
        group_sizes=[3, 7],
        group_adjustment=1.0,
    )
    objective(torch.tensor([2.0, 1.0]), ["a", "b"])
    objective(torch.tensor([1.0]), ["b"])
    objective.save(str(tmp_path / "state.safetensors"))
    restored = GroupObjective.from_file(str(tmp_path / "state.safetensors"))
    assert (restored.group_loss_estimate, restored.group_weight_floor) == ("ema", 0.1)
    torch.testing.assert_close(restored.group_sizes, torch.tensor([3.0, 7.0], dtype=torch.float64))
    torch.testing.assert_close(restored.weights, objective.weights)
    for twin in (objective, restored):
        twin(torch.tensor([0.5]), ["a"])
    torch.testing.assert_close(restored.weights, objective.weights)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"loss_estimate": "mean"}, "loss_estimate"), ({"weight_floor": 1.0}, "weight_floor")],
)
def test_invalid_robust_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupObjective(num_groups=2, **kwargs)
