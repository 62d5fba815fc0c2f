"""Measures: pure functions that observe a model, plus their registered adapters."""

from heldout.core.measure import EvalContext, Measure, evaluate
from heldout.core.per_example import per_example_gradients
from heldout.measures.alignment import GradientWeightAlignment, gradient_weight_cosine
from heldout.measures.bounds import OccamBound, kl_inverse, occam_bound, tightness_report
from heldout.measures.calibration import (
    ECE,
    Calibration,
    brier_score,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_diagram,
    risk_coverage,
)
from heldout.measures.coherence import GradientCoherence, m_coherence
from heldout.measures.collapse import (
    SoftmaxCollapse,
    softmax_collapse,
    softmax_collapse_fraction,
)
from heldout.measures.complexity import LocalComplexity, local_complexity
from heldout.measures.concepts import ConceptFrequency, log_linear_fit, long_tail_split
from heldout.measures.flatness import PacBayesFlatness, pac_bayes_sigma
from heldout.measures.groups import GroupAccuracy, group_accuracies, group_metrics
from heldout.measures.inductive_bias import InductiveBias, estimate_inductive_bias
from heldout.measures.information import (
    InformationPlane,
    binned_information,
    kde_information,
    ksg_mutual_information,
)
from heldout.measures.kernel import NTKAlignment, empirical_ntk, kernel_alignment
from heldout.measures.norms import (
    DistanceFromInit,
    Margin,
    Norms,
    fold_batch_norm,
    norm_measures,
    path_norm,
)
from heldout.measures.outliers import OpposingSignals, opposing_signals
from heldout.measures.performance import (
    Accuracy,
    GeneralizationGap,
    Loss,
    accuracy,
    generalization_gap,
)
from heldout.measures.periodicity import NeuronIPR, fourier_ipr, neuron_ipr, prune_by_ipr
from heldout.measures.ranking import granulated_kendall, kendall_tau, rank_measures
from heldout.measures.representation import (
    RepresentationDivergence,
    gaussian_kl,
    representation_divergence,
    sliced_wasserstein,
)
from heldout.measures.sharpness import Hessian, Sharpness, hessian_top_eigenvalue, hessian_trace
from heldout.measures.sharpness import sharpness as sharpness_value

__all__ = [
    "GradientCoherence",
    "NTKAlignment",
    "OpposingSignals",
    "empirical_ntk",
    "kernel_alignment",
    "m_coherence",
    "opposing_signals",
    "per_example_gradients",
    "DistanceFromInit",
    "InductiveBias",
    "Margin",
    "Norms",
    "OccamBound",
    "PacBayesFlatness",
    "estimate_inductive_bias",
    "fold_batch_norm",
    "granulated_kendall",
    "kendall_tau",
    "kl_inverse",
    "norm_measures",
    "occam_bound",
    "pac_bayes_sigma",
    "path_norm",
    "rank_measures",
    "tightness_report",
    "Hessian",
    "Sharpness",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "sharpness_value",
    "ConceptFrequency",
    "InformationPlane",
    "LocalComplexity",
    "NeuronIPR",
    "RepresentationDivergence",
    "binned_information",
    "fourier_ipr",
    "gaussian_kl",
    "kde_information",
    "ksg_mutual_information",
    "local_complexity",
    "log_linear_fit",
    "long_tail_split",
    "neuron_ipr",
    "prune_by_ipr",
    "representation_divergence",
    "sliced_wasserstein",
    "ECE",
    "Calibration",
    "GroupAccuracy",
    "brier_score",
    "group_accuracies",
    "group_metrics",
    "maximum_calibration_error",
    "reliability_diagram",
    "risk_coverage",
    "Accuracy",
    "EvalContext",
    "GeneralizationGap",
    "GradientWeightAlignment",
    "Loss",
    "Measure",
    "SoftmaxCollapse",
    "accuracy",
    "default_measures",
    "evaluate",
    "expected_calibration_error",
    "generalization_gap",
    "gradient_weight_cosine",
    "softmax_collapse",
    "softmax_collapse_fraction",
]


def default_measures() -> list[Measure]:
    """Accuracy, loss, ECE and the generalization gap."""
    return [Accuracy(), Loss(), ECE(), GeneralizationGap()]
