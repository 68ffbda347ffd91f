"""The robust min-max options in the diffusion script: stratified batches, exact resume with a group sampler, and the
adjustment with training-set group sizes."""

from __future__ import annotations

import pytest

from tests.integrations.diffusion.test_train import DIGITS, save_tiny_unet2d, train


@pytest.fixture(scope="module")
def class_conditional_unet(tmp_path_factory):
    return save_tiny_unet2d(tmp_path_factory.mktemp("cc-unet-robust"), class_conditional=True)


def test_stratified_steps_hold_every_digit_and_sizes_come_from_the_training_set(class_conditional_unet, tmp_path):
    from hf_egt.integrations.diffusion.data import load_image_dataset

    result = train(
        class_conditional_unet,
        tmp_path,
        *DIGITS,
        "--per_device_train_batch_size",
        "6",
        "--gradient_accumulation_steps",
        "2",
        "--group_sampling",
        "stratified",
        "--group_loss_estimate",
        "last",
        "--group_weight_floor",
        "0.1",
        "--max_steps",
        "3",
    )
    groups = result.group_objective.groups
    for log in result.log_history:  # 12 images per step, 10 digits: each digit once or twice
        assert sorted(log[f"group_count/{g}"] for g in groups) == [1.0] * 8 + [2.0] * 2
    labels = load_image_dataset("digits-imbalanced", "train")["group"]
    expected = [float(sum(1 for label in labels if label == g)) for g in groups]
    assert result.group_objective.objectives[0].group_sizes.tolist() == expected
    assert min(expected) < max(expected) / 2  # imbalanced: the sizes are not the window's
    assert result.group_objective.weights.min() >= 0.1 / len(groups) - 1e-9
