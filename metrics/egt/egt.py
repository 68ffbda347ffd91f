# Copyright 2026 The hf-egt developers. Licensed under the Apache License, Version 2.0.
"""EGT (Equalized Generative Treatment): per-group f-divergence between real and generated samples.

A thin `evaluate` wrapper around `hf_egt.core.metrics.egt_report`; the package `hf-egt` must be installed
(`pip install hf-egt`). See README.md for the formulas, inputs and outputs.
"""

# evaluate finds the dependencies with a regex over the lines: keep one import per line.
import datasets  # noqa: I001
import evaluate
import numpy as np
from hf_egt.core.metrics import DIVERGENCES
from hf_egt.core.metrics import RECOMMENDED_TEXT_DIVERGENCE
from hf_egt.core.metrics.inputs import check_group_labels
from hf_egt.integrations.evaluation import embedding_egt

_CITATION = """\
@article{verine2026egt,
  title={Equalized Generative Treatment: Matching f-Divergences for Fairness in Generative Models},
  author={V{\\'e}rine, Alexandre and Pinot, Rafael and Le Bronnec, Florian},
  journal={arXiv preprint arXiv:2602.08660},
  year={2026}
}
"""

_DESCRIPTION = """\
Equalized Generative Treatment asks that a generative model serve every group with the same quality: the
f-divergence D_f(P_a || Q_a) between the data P_a of group a and the model's samples Q_a for that group should be
the same for every group. The metric reports each group's divergence, the gap (max - min), the ratio (max / min),
the worst group, the pooled divergence, confidence intervals, each group's noise floor (two halves of its own real
data), the gap's permutation p-value, and the older proportion criteria (EGO:
equal generation shares; MGO: shares matching the data) beside it. Real and generated sample counts may differ.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: generated samples, as feature vectors (lists of floats) or texts (then pass `feature_model`).
    references: real samples, same kind as `predictions`; their number may differ from `predictions`.
    prediction_groups: group label of each generated sample.
    reference_groups: group label of each real sample.
    divergence: a name of `hf_egt.core.metrics.DIVERGENCES`: the quantised family ("quantized_js", "quantized_kl",
        "quantized_reverse_kl", "quantized_tv", "quantized_hellinger", "quantized_chi2", "quantized_pr", "mauve") or
        the k-NN family ("kl", "reverse_kl", "js", "tv", "hellinger", "chi2", "pr", "frechet", "precision",
        "recall", "density", "coverage"); defaults to the config name (`evaluate.load("metrics/egt", "mauve")`),
        else "quantized_js" (the estimator docs/metric.md supports at ~100 samples per group).
    feature_model: Hugging Face encoder (Hub id or folder) that embeds texts (mean pooling).
    n_bootstrap: resampling replicates for the confidence intervals (default: 200 bootstrap replicates for the
        quantised family, 20 half-samples for the k-NN family; 0 for none).
    seed: seed of the codebook and of the resampling.
    Other keyword arguments (`n_null`, `n_permutations`, `confidence`, `device`, `k`, `n_neighbors`, `pr_lambda`,
    `num_clusters`, `pca`, `normalize`, ...) go to `hf_egt.core.metrics.egt_report`.
Returns:
    The report of `hf_egt.core.metrics.egt_report`: `divergence`, `per_group`, `gap`, `ratio`, `worst_group`,
    `best_group`, `overall`, `counts`, `ci`, `null_floor`, `within_floor`, `gap_p_value`, `gap_significant`,
    `missing`, `generated_share`, `data_share`, `ego_gap`, `mgo_gap`.
    Group labels are strings.
Examples:
    >>> egt = evaluate.load("metrics/egt")
    >>> egt.compute(predictions=[[0.0, 1.0], ...], prediction_groups=["a", ...],
    ...             references=[[0.1, 0.9], ...], reference_groups=["a", ...], divergence="kl")
"""


def _labels(groups, name):
    """Group labels as strings (lists, arrays and tensors alike); a missing label (None, NaN) is an error naming
    ``name``, not a group called 'None'."""
    return [str(group) for group in check_group_labels(groups, name)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EGT(evaluate.Metric):
    """Per-group divergence between real and generated samples (Equalized Generative Treatment)."""

    def _info(self):
        if self.config_name not in DIVERGENCES and self.config_name != "default":
            raise ValueError(
                f"Unknown EGT configuration {self.config_name!r}: pass a divergence name, one of {sorted(DIVERGENCES)} "
                '(e.g. `evaluate.load("metrics/egt", "kl")`), '
                f"or no configuration for {RECOMMENDED_TEXT_DIVERGENCE!r}."
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Only the generated side is a feature column: evaluate ties feature columns to one length, and the
            # real side (its own length) reaches `_compute` as plain keyword arguments.
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float32")),
                        "prediction_groups": datasets.Value("string"),
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "prediction_groups": datasets.Value("string")}
                ),
            ],
            reference_urls=["https://arxiv.org/abs/2602.08660"],
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Like `evaluate.Metric.compute`; `references` may have another length than `predictions`. Empty inputs
        and missing group labels are refused before any work, naming the argument."""
        if references is None or kwargs.get("reference_groups") is None:
            raise ValueError("`references` and `reference_groups` (the real samples and their groups) are required.")
        for name, value in (("predictions", predictions), ("references", references)):
            if value is None or len(value) == 0:
                raise ValueError(f"`{name}` is empty; pass at least one sample per group (and its group label).")
        for name in ("prediction_groups", "reference_groups"):
            if kwargs.get(name) is None:
                raise ValueError(f"`{name}` is required: the group label of each sample.")
            kwargs[name] = _labels(kwargs[name], name)
        return super().compute(predictions=predictions, reference_samples=references, **kwargs)

    def _compute(
        self,
        predictions,
        prediction_groups,
        reference_samples=None,
        reference_groups=None,
        divergence=None,
        feature_model=None,
        n_bootstrap=None,
        seed=0,
        **estimator_kwargs,
    ):
        if reference_samples is None or reference_groups is None:
            raise ValueError("`references` and `reference_groups` (the real samples and their groups) are required.")
        if divergence is None:
            divergence = RECOMMENDED_TEXT_DIVERGENCE if self.config_name == "default" else self.config_name
        predictions = list(predictions)
        references = list(reference_samples)
        if predictions and isinstance(predictions[0], str):
            if feature_model is None:
                raise ValueError(
                    "Text `predictions` need `feature_model`: a Hugging Face encoder to embed them "
                    "(e.g. 'sentence-transformers/all-MiniLM-L6-v2' or hf_egt.apps.offline.minilm_path())."
                )
            if not all(isinstance(text, str) for text in references):
                raise ValueError("`references` must be texts when `predictions` are texts.")
        else:
            predictions = np.asarray([np.asarray(vector, dtype=np.float32) for vector in predictions])
            references = np.asarray([np.asarray(vector, dtype=np.float32) for vector in references])
            feature_model = None  # already features
        return embedding_egt(
            references,
            list(reference_groups),
            generated_texts=predictions,
            generated_groups=list(prediction_groups),
            feature_model=feature_model,
            divergence=divergence,
            n_bootstrap=n_bootstrap,
            batch_size=64,  # embed_texts' default
            seed=seed,
            **estimator_kwargs,
        )
