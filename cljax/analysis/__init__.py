"""Analyses of saved results: continual-learning metrics, plasticity metrics, manifold capacity.

Pure functions on numpy arrays (definitions: ``docs/metrics.md``), PNG plots, and
:func:`analyze_run`, which streams a results folder task by task and writes the summary.
"""

from cljax.analysis.band import Band
from cljax.analysis.cl import (
    accuracy_matrix,
    average_accuracy,
    backward_transfer,
    chance_corrected,
    cl_analysis,
    cl_metrics_band,
    cl_metrics_from_matrix,
    current_task_accuracy,
    expert_accuracy,
    forgetting,
    forgetting_per_task,
    forward_transfer,
    normalised_transfer,
    plasticity_gap,
    plasticity_gap_best,
    snapshot_accuracy,
)
from cljax.analysis.driver import analyze_run
from cljax.analysis.glue import N_PROBES, glue_analysis, glue_geometry, make_dichotomies
from cljax.analysis.glue_runs import class_manifolds
from cljax.analysis.glue_reference import ball_capacity, simulated_capacity
from cljax.analysis.glue_solver import solve_anchor_qp
from cljax.analysis.plasticine import (
    active_fraction,
    dormant_ratio,
    effective_rank,
    feature_norm,
    feature_variance,
    feature_variance_across_units,
    representation_metrics,
    singular_values,
    srank,
    stable_rank,
    unit_scores,
    weight_change,
    weight_magnitude,
)
from cljax.analysis.probe import head_accuracy, probe_accuracy
from cljax.analysis.spread import spread
from cljax.analysis.plots import (
    plot_accuracy_matrix,
    plot_accuracy_over_time,
    plot_glue_over_tasks,
    plot_head_vs_probe,
    plot_learner_vs_expert,
    plot_metrics_over_tasks,
    plot_plasticity_over_tasks,
)

__all__ = [
    "Band", "accuracy_matrix", "average_accuracy", "backward_transfer", "chance_corrected", "cl_analysis",
    "cl_metrics_band", "cl_metrics_from_matrix", "current_task_accuracy", "expert_accuracy", "forgetting", "forgetting_per_task",
    "forward_transfer", "normalised_transfer", "plasticity_gap", "plasticity_gap_best", "snapshot_accuracy",
    "analyze_run", "class_manifolds", "head_accuracy", "probe_accuracy", "spread",
    "N_PROBES", "ball_capacity", "glue_analysis", "glue_geometry", "make_dichotomies", "simulated_capacity", "solve_anchor_qp",
    "active_fraction", "dormant_ratio", "effective_rank", "feature_norm", "feature_variance",
    "feature_variance_across_units", "representation_metrics", "singular_values", "srank", "stable_rank",
    "unit_scores", "weight_change", "weight_magnitude",
    "plot_accuracy_matrix", "plot_accuracy_over_time", "plot_glue_over_tasks", "plot_head_vs_probe", "plot_learner_vs_expert",
    "plot_metrics_over_tasks", "plot_plasticity_over_tasks",
]
