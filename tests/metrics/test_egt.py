"""The `evaluate` module metrics/egt and the text/image feature helpers."""

import math

import pytest
import torch

from hf_egt.core.metrics import RECOMMENDED_TEXT_DIVERGENCE, egt_report
from hf_egt.integrations.features import embed_images, embed_texts, load_text_encoder
from tests import REPO_ROOT

evaluate = pytest.importorskip("evaluate")
MODULE = str(REPO_ROOT / "metrics" / "egt")


@pytest.fixture(scope="module")
def features():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(120, 3, generator=generator)
    generated = 0.5 + torch.randn(90, 3, generator=generator)
    return real, ["a"] * 70 + ["b"] * 50, generated, ["a"] * 30 + ["b"] * 60


def test_load_and_compute_with_different_real_and_generated_counts(features):
    real, real_groups, generated, generated_groups = features
    egt = evaluate.load(MODULE)
    result = egt.compute(
        predictions=generated.tolist(),
        prediction_groups=generated_groups,
        references=real.tolist(),
        reference_groups=real_groups,
        divergence="kl",
        n_bootstrap=3,
    )
    expected = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="kl",
        n_bootstrap=3,
    )
    assert result["counts"] == {"a": {"real": 70, "generated": 30}, "b": {"real": 50, "generated": 60}}
    for group in ("a", "b"):
        assert result["per_group"][group] == pytest.approx(expected["per_group"][group], rel=1e-5)
        assert result["ci"][group] == pytest.approx(expected["ci"][group], rel=1e-4)
    assert result["overall"] == pytest.approx(expected["overall"], rel=1e-5)


def test_config_name_selects_the_divergence(features):
    real, real_groups, generated, generated_groups = features
    inputs = {
        "predictions": generated.tolist(),
        "prediction_groups": generated_groups,
        "references": real.tolist(),
        "reference_groups": real_groups,
        "n_bootstrap": 0,
    }
    result = evaluate.load(MODULE, "hellinger").compute(**inputs)
    assert result["divergence"] == "hellinger"
    expected = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="hellinger",
        n_bootstrap=0,
    )
    assert result["per_group"]["b"] == pytest.approx(expected["per_group"]["b"], rel=1e-5)
    assert evaluate.load(MODULE).compute(**inputs)["divergence"] == RECOMMENDED_TEXT_DIVERGENCE == "quantized_js"
    # Arrays and tensors of integer labels work on both sides (labels become strings).
    tensor_inputs = {
        **inputs,
        "predictions": generated.numpy(),
        "prediction_groups": torch.tensor([0] * 30 + [1] * 60),
        "references": real,
        "reference_groups": torch.tensor([0] * 70 + [1] * 50),
    }
    assert evaluate.load(MODULE, "hellinger").compute(**tensor_inputs)["per_group"]["1"] == pytest.approx(
        expected["per_group"]["b"], rel=1e-5
    )
    with pytest.raises(ValueError, match="reference_groups"):
        evaluate.load(MODULE).compute(predictions=generated.tolist(), prediction_groups=generated_groups)


@pytest.mark.slow
def test_text_inputs_are_embedded_with_the_feature_model():
    from hf_egt.apps.offline import minilm_path

    real_texts = [f"The {kind} actor starred in film number {i}." for i in range(12) for kind in ("young", "old")]
    generated_texts = [f"An {kind} actress played in {i} movies." for i in range(10) for kind in ("famous", "new")]
    real_groups = ["a", "b"] * 12
    generated_groups = ["a", "b"] * 10
    result = evaluate.load(MODULE, "tv").compute(
        predictions=generated_texts,
        prediction_groups=generated_groups,
        references=real_texts,
        reference_groups=real_groups,
        feature_model=str(minilm_path()),
        n_bootstrap=0,
    )
    encoder = load_text_encoder(minilm_path())
    real = embed_texts(real_texts, encoder, show_progress=False)
    generated = embed_texts(generated_texts, encoder, show_progress=False)
    assert real.shape == (24, 384)
    expected = egt_report(
        real,
        real_groups,
        generated_features=generated,
        generated_groups=generated_groups,
        divergence="tv",
        n_bootstrap=0,
    )
    assert result["per_group"] == pytest.approx(expected["per_group"])
    with pytest.raises(ValueError, match="feature_model"):
        evaluate.load(MODULE).compute(
            predictions=generated_texts,
            prediction_groups=generated_groups,
            references=real_texts,
            reference_groups=real_groups,
        )


def test_embed_texts_mean_pooling_ignores_padding():
    from hf_egt.apps.offline import minilm_path

    encoder = load_text_encoder(minilm_path())
    texts = ["short", "a much longer sentence that needs many more tokens than the first one"]
    batched = embed_texts(texts, encoder, batch_size=2, show_progress=False)
    alone = torch.cat([embed_texts([text], encoder, batch_size=1, show_progress=False) for text in texts])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    normalized = embed_texts(texts, encoder, normalize=True, show_progress=False)
    torch.testing.assert_close(normalized.norm(dim=1), torch.ones(2))


def test_embed_images_batches_any_module():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2))
    images = torch.randn(10, 1, 8, 8)
    features = embed_images(images, module, batch_size=3, device="cpu", show_progress=False)
    assert features.shape == (10, 16)
    with torch.no_grad():
        torch.testing.assert_close(features, module(images).flatten(1))
    assert embed_images(list(images), module, batch_size=4, device="cpu", show_progress=False).shape == (10, 16)
    assert math.isfinite(float(features.sum()))


def test_empty_inputs_and_missing_group_labels_are_refused_naming_the_argument(features):
    real, real_groups, generated, generated_groups = features
    egt = evaluate.load(MODULE)
    full = dict(
        predictions=generated.tolist(),
        prediction_groups=generated_groups,
        references=real.tolist(),
        reference_groups=real_groups,
    )
    with pytest.raises(ValueError, match="`predictions` is empty"):
        egt.compute(**{**full, "predictions": [], "prediction_groups": []})
    with pytest.raises(ValueError, match="`references` is empty"):
        egt.compute(**{**full, "references": [], "reference_groups": []})
    with pytest.raises(ValueError, match=r"`prediction_groups` has 1 missing label\(s\) \(None or NaN\) at row\(s\) 3"):
        egt.compute(**{**full, "prediction_groups": generated_groups[:3] + [None] + generated_groups[4:]})
    with pytest.raises(ValueError, match=r"`reference_groups` has 2 missing label"):
        egt.compute(**{**full, "reference_groups": [None, math.nan] + real_groups[2:]})
