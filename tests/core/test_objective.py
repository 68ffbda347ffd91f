"""GroupObjective: hand-computed cases for every mode, properties, overflow, windows and state."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_egt import OBJECTIVE_MODES, GroupObjective
from hf_egt.core.groups import group_means, group_sums
from hf_egt.core.objective import exponentiated_gradient_step, weighted_group_loss

LOSSES = torch.tensor([1.0, 3.0, 2.0, 6.0, 4.0])
GROUPS = ["a", "a", "b", "b", "b"]  # group means: a = 2, b = 4


def reference_group_dro_step(adv_probs, losses, group_idx, n_groups, step_size):
    """kohpangwei/group_DRO `LossComputer.compute_robust_loss` (is_robust, no btl), written out literally."""
    group_map = (group_idx == torch.arange(n_groups).unsqueeze(1).long()).float()
    group_count = group_map.sum(1)
    group_denom = group_count + (group_count == 0).float()
    group_loss = (group_map @ losses.view(-1)) / group_denom
    adv_probs = adv_probs * torch.exp(step_size * group_loss.data)
    adv_probs = adv_probs / adv_probs.sum()
    return group_loss @ adv_probs, adv_probs


def test_erm_is_plain_mean():
    out = GroupObjective(groups=["a", "b"], objective="erm")(LOSSES, GROUPS)
    assert out.loss.item() == pytest.approx(LOSSES.mean().item())
    assert out.group_losses.tolist() == pytest.approx([2.0, 4.0])
    assert out.weights.tolist() == pytest.approx([2 / 5, 3 / 5])


def test_erm_with_token_counts_is_token_mean():
    # example_weights = token counts, per-example losses = per-example token means -> global token mean.
    token_means = torch.tensor([1.0, 2.0, 4.0])
    tokens = torch.tensor([1.0, 3.0, 4.0])
    out = GroupObjective(num_groups=2, objective="erm")(token_means, torch.tensor([0, 0, 1]), example_weights=tokens)
    assert out.loss.item() == pytest.approx((1 * 1 + 2 * 3 + 4 * 4) / 8)
    assert out.group_losses.tolist() == pytest.approx([(1 + 6) / 4, 4.0])


def test_reweight_is_mean_of_group_means():
    out = GroupObjective(groups=["a", "b"], objective="reweight")(LOSSES, GROUPS)
    assert out.loss.item() == pytest.approx((2.0 + 4.0) / 2)


def test_reweight_ignores_absent_groups():
    out = GroupObjective(groups=["a", "b", "c"], objective="reweight")(LOSSES, GROUPS)
    assert out.loss.item() == pytest.approx(3.0)
    assert out.weights.tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_minmax_hand_computed():
    eta = 0.5
    out = GroupObjective(groups=["a", "b"], objective="minmax", group_step_size=eta)(LOSSES, GROUPS)
    q = torch.tensor([math.exp(eta * 2.0), math.exp(eta * 4.0)])
    q = q / q.sum()
    assert out.weights.tolist() == pytest.approx(q.tolist())
    assert out.loss.item() == pytest.approx((q * torch.tensor([2.0, 4.0])).sum().item(), rel=1e-6)


def test_minmax_matches_reference_implementation_over_steps():
    torch.manual_seed(0)
    n_groups, eta = 4, 0.3
    objective = GroupObjective(num_groups=n_groups, objective="minmax", group_step_size=eta)
    adv_probs = torch.ones(n_groups) / n_groups
    for _ in range(10):
        losses = torch.rand(16) * 3
        group_idx = torch.randint(0, n_groups - 1, (16,))  # group 3 always absent
        ref_loss, adv_probs = reference_group_dro_step(adv_probs, losses, group_idx, n_groups, eta)
        out = objective(losses, group_idx)
        assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
        assert objective.weights.float().tolist() == pytest.approx(adv_probs.tolist(), rel=1e-5)


def test_worst_picks_largest_present_group():
    objective = GroupObjective(groups=["a", "b", "c"], objective="worst")
    out = objective(LOSSES, GROUPS)
    assert out.loss.item() == pytest.approx(4.0)
    assert out.weights.tolist() == [0.0, 1.0, 0.0]
    # next batch has only "a": the worst *present* group is "a" even though "b" was worse before
    out = objective(torch.tensor([0.5]), ["a"])
    assert out.loss.item() == pytest.approx(0.5)


def test_ema_hand_computed():
    decay, temperature = 0.5, 2.0
    objective = GroupObjective(groups=["a", "b"], objective="ema", group_ema_decay=decay, group_temperature=temperature)
    objective(LOSSES, GROUPS)  # first sight initialises the EMA: (2, 4)
    out = objective(torch.tensor([4.0, 0.0]), ["a", "b"])  # EMA -> (3, 2)
    expected = torch.softmax(torch.tensor([3.0, 2.0]) / temperature, 0)
    assert out.weights.tolist() == pytest.approx(expected.tolist())
    assert out.loss.item() == pytest.approx((expected * torch.tensor([4.0, 0.0])).sum().item())


def test_generalization_adjustment_enters_update_only():
    adjustment, eta = 2.0, 1.0
    out = GroupObjective(groups=["a", "b"], objective="minmax", group_step_size=eta, group_adjustment=adjustment)(
        LOSSES, GROUPS
    )
    adjusted = torch.tensor([2.0 + adjustment / math.sqrt(2), 4.0 + adjustment / math.sqrt(3)])
    q = torch.softmax(eta * adjusted, 0)
    assert out.weights.tolist() == pytest.approx(q.tolist())
    assert out.group_losses.tolist() == pytest.approx([2.0, 4.0])


def test_overflow_is_finite_and_normalised():
    objective = GroupObjective(num_groups=3, objective="minmax", group_step_size=10.0)
    for _ in range(5):
        out = objective(torch.tensor([1e4, 1e4 - 1, 3.0]), torch.tensor([0, 1, 2]))
    weights = objective.weights
    assert torch.isfinite(weights).all() and torch.isfinite(out.loss)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[0].item() == pytest.approx(1.0)


def test_gradient_flows_to_losses():
    losses = LOSSES.clone().requires_grad_(True)
    out = GroupObjective(groups=["a", "b"], objective="reweight")(losses, GROUPS)
    out.loss.backward()
    assert losses.grad.tolist() == pytest.approx([0.25, 0.25, 1 / 6, 1 / 6, 1 / 6])


# -- properties -------------------------------------------------------------------------------------------------------

batches = st.integers(min_value=1, max_value=24).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0.0, 50.0, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.integers(0, 4), min_size=n, max_size=n),
    )
)


@settings(max_examples=60, deadline=None)
@given(batch=batches, mode=st.sampled_from(OBJECTIVE_MODES), step_size=st.floats(0.0, 5.0))
def test_weights_stay_on_simplex(batch, mode, step_size):
    losses, ids = batch
    objective = GroupObjective(num_groups=5, objective=mode, group_step_size=step_size)
    for _ in range(3):
        out = objective(torch.tensor(losses), torch.tensor(ids))
        assert (out.weights >= 0).all()
        assert torch.isfinite(out.loss)
    assert objective.weights.sum().item() == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(batch=batches, step_size=st.floats(0.01, 5.0))
def test_absent_groups_get_no_increment(batch, step_size):
    losses, ids = batch
    objective = GroupObjective(num_groups=5, objective="minmax", group_step_size=step_size)
    before = objective.log_weights.clone()
    objective(torch.tensor(losses), torch.tensor(ids))
    increments = objective.log_weights - before
    absent = [g for g in range(5) if g not in ids]
    # Under log-softmax every group shifts by the same normaliser; absent groups shift by exactly that.
    normaliser_shift = increments[absent] if absent else None
    if absent:
        assert torch.allclose(normaliser_shift, normaliser_shift[0].expand_as(normaliser_shift))
        present_increments = increments[sorted(set(ids))] - normaliser_shift[0]
        assert (present_increments >= -1e-12).all()


@settings(max_examples=60, deadline=None)
@given(batch=batches, mode=st.sampled_from(OBJECTIVE_MODES), seed=st.integers(0, 2**16))
def test_permuting_examples_changes_nothing(batch, mode, seed):
    losses, ids = torch.tensor(batch[0], dtype=torch.float64), torch.tensor(batch[1])
    permutation = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    first = GroupObjective(num_groups=5, objective=mode, group_step_size=0.7)(losses, ids)
    second = GroupObjective(num_groups=5, objective=mode, group_step_size=0.7)(losses[permutation], ids[permutation])
    assert first.loss.item() == pytest.approx(second.loss.item(), rel=1e-9, abs=1e-9)
    assert torch.allclose(first.weights, second.weights)


# -- accumulation windows ----------------------------------------------------------------------------------------------


def run_windows(mode, micro_batches_per_step, steps=4, seed=0):
    """Drive the objective over `steps` optimizer steps of 12 examples, split into micro-batches; return the total
    gradient wrt the losses of each step, the window losses and the final weights."""
    generator = torch.Generator().manual_seed(seed)
    objective = GroupObjective(num_groups=3, objective=mode, group_step_size=0.5)
    grads, window_losses = [], []
    for _ in range(steps):
        losses = (torch.rand(12, generator=generator, dtype=torch.float64) * 4).requires_grad_(True)
        ids = torch.randint(0, 3, (12,), generator=generator)
        tokens = torch.randint(1, 5, (12,), generator=generator).double()
        chunks = list(
            zip(
                losses.split(12 // micro_batches_per_step),
                ids.split(12 // micro_batches_per_step),
                tokens.split(12 // micro_batches_per_step),
            )
        )
        objective.begin_window([c[1] for c in chunks], [c[2] for c in chunks])
        total = sum(objective.window_loss(*chunk).loss for chunk in chunks)
        total.backward()
        grads.append(losses.grad.clone())
        window_losses.append(objective.end_window().loss.item())
    return grads, window_losses, objective.weights


@pytest.mark.parametrize("mode", OBJECTIVE_MODES)
def test_window_split_invariance(mode):
    whole = run_windows(mode, 1)
    for split in (2, 3, 4):
        parts = run_windows(mode, split)
        for grad_whole, grad_parts in zip(whole[0], parts[0]):
            assert torch.allclose(grad_whole, grad_parts, atol=1e-12)
        assert whole[1] == pytest.approx(parts[1], rel=1e-12)
        assert torch.allclose(whole[2], parts[2], atol=1e-12)


def test_window_with_one_micro_batch_lags_reference_by_one_update():
    """The window order weights step t with the state after step t-1 (documented difference from __call__)."""
    losses, ids = torch.tensor([1.0, 5.0, 2.0]), torch.tensor([0, 1, 1])
    windowed = GroupObjective(num_groups=2, objective="minmax", group_step_size=1.0)
    weights = windowed.begin_window([ids])
    assert weights.tolist() == pytest.approx([0.5, 0.5])  # initial weights, not yet updated
    windowed.window_loss(losses, ids)
    windowed.end_window()
    reference = GroupObjective(num_groups=2, objective="minmax", group_step_size=1.0)
    reference(losses, ids)
    assert torch.allclose(windowed.weights, reference.weights)


def test_window_errors():
    objective = GroupObjective(num_groups=2)
    with pytest.raises(RuntimeError, match="begin_window"):
        objective.window_loss(torch.ones(2), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="begin_window"):
        objective.end_window()


# -- labels, validation, state ----------------------------------------------------------------------------------------


def test_labels_map_strings_and_ints():
    objective = GroupObjective(groups=["female", "male"])
    assert objective.encode(["male", "female"]).tolist() == [1, 0]
    ints = GroupObjective(groups=[10, 20])
    assert ints.encode([20, 10]).tolist() == [1, 0]
    assert ints.encode(torch.tensor([1])).tolist() == [1]  # a tensor holds ids, a list holds labels
    with pytest.raises(ValueError, match=r"Group id 20 is out of range; valid ids are 0..1"):
        ints.encode(torch.tensor([20]))


def test_unknown_label_error_names_it_and_known_labels():
    objective = GroupObjective(groups=["female", "male"])
    with pytest.raises(ValueError, match=r"'nonbinary'.*\['female', 'male'\]"):
        objective(torch.ones(1), ["nonbinary"])
    with pytest.raises(ValueError, match="Group id 5 is out of range"):
        GroupObjective(num_groups=2)(torch.ones(1), torch.tensor([5]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_groups": 2, "objective": "dro"}, r"`objective` must be one of \('erm', 'reweight', 'minmax'"),
        ({}, "Pass `num_groups` or `groups`"),
        ({"num_groups": 3, "groups": ["a", "b"]}, "`num_groups`=3"),
        ({"groups": ["a", "a"]}, "duplicate"),
        ({"num_groups": 2, "group_step_size": -1.0}, "`group_step_size`"),
        ({"num_groups": 2, "group_temperature": 0.0}, "`group_temperature`"),
        ({"num_groups": 2, "group_ema_decay": 1.0}, "`group_ema_decay`"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupObjective(**kwargs)


def test_shape_errors():
    objective = GroupObjective(num_groups=2)
    with pytest.raises(ValueError, match="1-D"):
        objective(torch.ones(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`group_ids` has 1 entries"):
        objective(torch.ones(2), torch.tensor([0]))
    with pytest.raises(ValueError, match="`example_weights`"):
        objective(torch.ones(2), torch.tensor([0, 1]), example_weights=torch.ones(3))
    with pytest.raises(TypeError, match="integer"):
        objective(torch.ones(2), torch.tensor([0.0, 1.0]))


def test_non_finite_loss_names_step_and_group():
    objective = GroupObjective(groups=["a", "b"])
    objective(torch.ones(2), ["a", "b"])
    with pytest.raises(FloatingPointError, match=r"step 1 .*\['b'\]"):
        objective(torch.tensor([1.0, float("nan")]), ["a", "b"])


@pytest.mark.parametrize("mode", OBJECTIVE_MODES)
def test_state_round_trip(tmp_path, mode):
    generator = torch.Generator().manual_seed(1)
    objective = GroupObjective(groups=["x", "y", "z"], objective=mode, group_step_size=0.4, group_adjustment=0.1)
    for _ in range(3):
        objective(torch.rand(9, generator=generator), torch.randint(0, 3, (9,), generator=generator))
    path = tmp_path / "objective.safetensors"
    objective.save(path)
    restored = GroupObjective.from_file(path)
    in_memory = GroupObjective(groups=["x", "y", "z"], objective=mode, group_step_size=0.4, group_adjustment=0.1)
    in_memory.load_state_dict(objective.state_dict())
    batch = (torch.rand(9, generator=generator), torch.randint(0, 3, (9,), generator=generator))
    expected = objective(*batch)
    for other in (restored, in_memory):
        assert other.step == objective.step - 1
        got = other(*batch)
        assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-12)
        assert torch.equal(other.log_weights, objective.log_weights)
        assert torch.equal(other.ema_losses, objective.ema_losses)
        assert other.groups == ["x", "y", "z"]


def test_a_state_saved_under_the_old_key_names_still_loads_with_a_warning(tmp_path):
    """States and files written before the rename (`mode`, `step_size`...) load for one release, warning once."""
    from hf_egt.core.objective import RENAMED_KEYWORDS
    from hf_egt.core.serialization import save_tensors_with_metadata

    objective = GroupObjective(groups=["a", "b"], objective="ema", group_step_size=0.3, group_temperature=2.0)
    objective(torch.tensor([1.0, 3.0]), ["a", "b"])
    state = objective.state_dict()
    assert set(RENAMED_KEYWORDS.values()) <= set(state) and not set(RENAMED_KEYWORDS) & set(state)
    old_name = {new: old for old, new in RENAMED_KEYWORDS.items()}
    old = {old_name.get(key, key): value for key, value in state.items()}
    assert "mode" in old and "objective" not in old
    restored = GroupObjective(groups=["a", "b"], objective="ema")
    with pytest.warns(FutureWarning, match=r"state key\(s\) 'mode', 'step_size'.*use 'objective', 'group_step_size'"):
        restored.load_state_dict(old)
    assert (restored.group_step_size, restored.group_temperature) == (0.3, 2.0)
    torch.testing.assert_close(restored.weights, objective.weights)
    path = tmp_path / "old.safetensors"
    tensors = {k: v for k, v in old.items() if isinstance(v, torch.Tensor)}
    save_tensors_with_metadata(tensors, {k: v for k, v in old.items() if k not in tensors}, path)
    with pytest.warns(FutureWarning, match="state key"):
        from_file = GroupObjective.from_file(path)
    assert (from_file.objective, from_file.group_temperature) == ("ema", 2.0)
    with pytest.raises(ValueError, match="objective 'ema', this objective has objective 'minmax'"):
        with pytest.warns(FutureWarning):
            GroupObjective(groups=["a", "b"]).load_state_dict(old)


def test_load_state_rejects_other_groups():
    state = GroupObjective(groups=["a", "b"]).state_dict()
    with pytest.raises(ValueError, match="groups"):
        GroupObjective(groups=["a", "c"]).load_state_dict(state)


def test_pure_functions_agree_with_loops():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ids = torch.tensor([2, 0, 2, 0])
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sums, counts = group_sums(values, ids, 3, weights)
    assert sums.tolist() == [2 * 2 + 4 * 4, 0.0, 1 + 9]
    assert counts.tolist() == [6.0, 0.0, 4.0]
    assert group_means(sums, counts).tolist() == pytest.approx([20 / 6, 0.0, 10 / 4])
    q = torch.tensor([0.25, 0.5, 0.25])
    expected = sum(q[g] * weights[i] * values[i] / counts[g] for i, g in enumerate(ids.tolist()))
    assert weighted_group_loss(values, ids, q, counts, weights).item() == pytest.approx(expected.item())
    step = exponentiated_gradient_step(
        torch.log(q.double()), torch.tensor([1.0, 9.0, 2.0]).double(), torch.tensor([True, False, True]), 1.0
    )
    manual = q.double() * torch.exp(torch.tensor([1.0, 0.0, 2.0]).double())
    assert step.exp().tolist() == pytest.approx((manual / manual.sum()).tolist())
