"""``hf_egt.core.metrics.registry``: the names, their families and directions, and the error for an unknown name."""

import ast

import pytest
import torch

from hf_egt.core.metrics import estimate, prdc
from hf_egt.core.metrics.quantized import HISTOGRAM_DIVERGENCES
from hf_egt.core.metrics.registry import (
    DIVERGENCES,
    KNN_DIVERGENCES,
    KNN_REFUSED_ABOVE,
    KNN_VALIDATED_DIM,
    QUANTIZED,
    RECOMMENDED_TEXT_DIVERGENCE,
    check_divergence,
)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_every_registered_name_passes_the_check(name):
    assert check_divergence(name) is None


@pytest.mark.parametrize("argument", ["divergence", "--divergence"])
def test_an_unknown_name_is_refused_naming_the_argument_and_every_valid_name(argument):
    with pytest.raises(ValueError, match=f"^Unknown `{argument}` 'kld'; valid names are ") as error:
        check_divergence("kld", argument)
    listed = ast.literal_eval(str(error.value).split("valid names are ")[1].rstrip("."))
    assert listed == sorted(DIVERGENCES)


def test_families_and_limits_name_registered_estimators():
    assert set(QUANTIZED) <= set(DIVERGENCES) and set(QUANTIZED.values()) <= set(HISTOGRAM_DIVERGENCES)
    assert set(KNN_DIVERGENCES) <= set(DIVERGENCES) - set(QUANTIZED)
    assert RECOMMENDED_TEXT_DIVERGENCE in QUANTIZED
    assert all(name in DIVERGENCES and name not in QUANTIZED for name in KNN_REFUSED_ABOVE)
    assert all(limit < KNN_VALIDATED_DIM for limit, _ in KNN_REFUSED_ABOVE.values())


def test_prdc_entries_are_the_matching_prdc_score():
    generator = torch.Generator().manual_seed(0)
    real, generated = torch.randn(60, 2, generator=generator), 0.5 + torch.randn(50, 2, generator=generator)
    scores = prdc(real, generated, k=5)
    for key, value in scores.items():
        assert float(DIVERGENCES[key][0](real, generated)) == pytest.approx(float(value))


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_higher_is_worse_agrees_with_each_estimator(name):
    """A generated set far from the real one must score worse than one from the real distribution."""
    generator = torch.Generator().manual_seed(1)
    real = torch.randn(200, 2, generator=generator, dtype=torch.float64)
    same = torch.randn(200, 2, generator=generator, dtype=torch.float64)
    shifted = 3.0 + torch.randn(200, 2, generator=generator, dtype=torch.float64)
    close, far = float(estimate(real, same, name)), float(estimate(real, shifted, name))
    higher_is_worse = DIVERGENCES[name][1]
    assert (far > close) if higher_is_worse else (far < close)
