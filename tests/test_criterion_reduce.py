"""The criterions' ``reduce_metrics``: per-sample means over the workers' logging outputs (shared helpers)."""
import pytest


@pytest.mark.parametrize("criterion, logs, want", [
    ("slu_classification.SluClassificationCriterion",
     [{"loss": 3.0, "correct": 1, "sample_size": 2}, {"loss": 1.0, "correct": 2, "sample_size": 2}],
     {"loss": 1.0, "accuracy": 75.0}),
    ("spoken_qa.SpokenQaCriterion",
     [{"loss": 2.0, "aos": 0.5, "f1": 1.0, "sample_size": 1}, {"loss": 4.0, "aos": 1.0, "f1": 0.5, "sample_size": 3}],
     {"loss": 1.5, "aos": 37.5, "f1": 37.5}),
    ("splat_alignment.SplatAlignmentCriterion",
     [{"loss": 1.0, "cos_s1_cls": 0.5, "sample_size": 4}, {"loss": 1.0, "cos_s1_cls": 1.5}],
     {"loss": 0.5, "cos_s1_cls": 0.5}),
    ("splat_reconstruction.SplatReconstructionCriterion",
     [{"loss": 6.0, "masked_l1": 3.0, "masked_entries": 4, "sample_size": 3}],
     {"loss": 2.0, "masked_l1": 0.75}),
    ("splat_alignment.SplatAlignmentCriterion", [{}], {"loss": 0.0, "cos_s1_cls": 0.0}),
])
def test_reduce_metrics_are_per_sample_means(criterion, logs, want):
    import importlib

    from fairseq import metrics

    module, cls = criterion.split(".")
    reduce_metrics = getattr(importlib.import_module(f"speechlm.criterions.{module}"), cls).reduce_metrics
    with metrics.aggregate() as agg:
        reduce_metrics(logs)
    assert dict(agg.get_smoothed_values()) == pytest.approx(want)
