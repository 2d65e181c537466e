"""Analyses of saved results: continual-learning metrics, plasticity metrics, manifold capacity.

Pure functions on numpy arrays (definitions: ``docs/metrics.md``), PNG plots, and
:func:`analyze_run`, which streams a results folder task by task and writes the summary.

The names below are imported when first used: a training run, which needs only the probe,
does not import matplotlib and every analysis with it.
"""

import importlib

# A name its own module shares is bound now: importing the module (the probe does) would
# otherwise leave the module, not the function, under that name.
spread = importlib.import_module("cljax.analysis.spread").spread

_NAMES = {  # module of cljax.analysis -> the names it gives this package
    "band": ("Band",),
    "cl": ("accuracy_matrix", "average_accuracy", "backward_transfer", "chance_corrected", "cl_analysis",
           "cl_metrics_band", "cl_metrics_from_matrix", "current_task_accuracy", "expert_accuracy", "forgetting",
           "forgetting_per_task", "forward_transfer", "normalised_transfer", "plasticity_gap",
           "plasticity_gap_best", "snapshot_accuracy"),
    "driver": ("analyze_run",),
    "glue_runs": ("class_manifolds",),
    "probe": ("head_accuracy", "probe_accuracy"),
    "spread": ("spread",),
    "glue": ("N_PROBES", "glue_analysis", "glue_geometry", "make_dichotomies"),
    "glue_reference": ("ball_capacity", "simulated_capacity"),
    "glue_solver": ("solve_anchor_qp",),
    "plasticine": ("active_fraction", "dormant_ratio", "effective_rank", "feature_norm", "feature_variance",
                   "feature_variance_across_units", "representation_metrics", "singular_values", "srank",
                   "stable_rank", "unit_scores", "weight_change", "weight_magnitude"),
    "plots": ("plot_accuracy_matrix", "plot_accuracy_over_time", "plot_glue_over_tasks", "plot_head_vs_probe",
              "plot_learner_vs_expert", "plot_metrics_over_tasks", "plot_plasticity_over_tasks"),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'cljax.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cljax.analysis.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF))
