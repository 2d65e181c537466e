"""Linear probes of the saved representations: is a task forgotten by the representation, or
only by the read-out?

With one output shared by every task, the head's accuracy on an earlier task mostly measures
how the later tasks' labels moved the head, not whether the representation still separates the
earlier task's classes. A linear probe answers the second question: a closed-form ridge
classifier fitted on half of a task's saved test samples (``representations.npy``) and tested
on the other half, per repeat (:func:`probe_accuracy`). The ``probe`` analysis puts it beside
the head's accuracy on the same tasks, at the last snapshot of every task folder, and the
probe's baseline (:func:`trained_gain`): a network that never trained a task already probes it
well, so the analysis sets a task's probe at the end against its probe before its task and right
after it.

Probe (definitions also in ``docs/metrics.md``): the S saved samples of a task are split by
class into two halves (within each class the first half in stored order is fold 0, the rest
fold 1). The representations are centred on the mean of the fitting fold (Z); targets are
y = +1 (label 1) / -1 (label 0), centred; the weights solve (Z^T Z + lambda I) w = Z^T y over
the fitting fold with lambda = ``ridge`` times the mean squared norm of its centred rows (the
scale of the Gram matrix's diagonal, so the probe does not depend on the representation's
scale). A sample is predicted label 1 when Z w + mean(y) > 0. With ``cross_fit`` each fold is
tested by the probe fitted on the other, so every one of the S samples is tested once, by a
probe fitted on the other fold: S/2 samples each when each class has an even count (S a
multiple of 4), else folds of 2 floor(S/4) and the rest. A task with fewer than 2 samples of a
class has a fold without that class, so it has no probe accuracy (NaN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cljax.analysis.band import Band
from cljax.analysis.cl import masked_mean
from cljax.analysis.spread import spread, undefined
from cljax.errors import CljaxError
from cljax.models import CLASSIFIER_GROUP

if TYPE_CHECKING:
    from cljax.analysis.registry import RunContext, TaskFolder

RIDGE = 0.1  # lambda relative to the Gram matrix's diagonal (docs/metrics.md: how the probe varies with it)


def probe_folds(labels) -> np.ndarray:
    """Fold (0 or 1) of every sample, (..., S) -> (..., S) bool (True: fold 1): within each
    class the first half of its samples (in stored order, rounded down) is fold 0."""
    labels = np.asarray(labels)
    fold = np.zeros(labels.shape, dtype=bool)
    for c in np.unique(labels):
        is_c = labels == c
        rank = np.cumsum(is_c, axis=-1) - 1
        fold |= is_c & (rank >= is_c.sum(axis=-1, keepdims=True) // 2)
    return fold


def fold_sizes(labels) -> tuple[int, int]:
    """(samples in fold 0, in fold 1) of the saved samples' labels (..., S): the smallest fold 0
    and the largest fold 1 over the leading axes (the saved samples of every task have the same
    classes' counts)."""
    fold1 = probe_folds(labels)
    return int((~fold1).sum(axis=-1).min()), int(fold1.sum(axis=-1).max())


def _fit_and_test(X, y, fit, ridge: float):
    """Ridge probe fitted on the rows where ``fit`` and tested on the others: (correct, tested)
    counts, each of shape (...). X (..., S, H) float64, y (..., S) in {-1, +1}, fit (..., S) bool."""
    m = fit[..., None].astype(np.float64)
    n = np.maximum(m.sum(axis=-2), 1.0)  # (..., 1)
    # Centred on the fitting fold, not scaled per unit: with a few dozen fitting samples a unit's
    # variance there can be near 0, and scaling by it would blow that unit up on the test fold.
    Z = X - (m * X).sum(axis=-2, keepdims=True) / n[..., None]
    y_mean = (m[..., 0] * y).sum(axis=-1, keepdims=True) / n
    yc = (y - y_mean) * m[..., 0]
    Zf = Z * m
    S, H = Zf.shape[-2:]
    Zt = np.swapaxes(Zf, -1, -2)
    # The same probe in whichever of its two forms has the smaller system: with fewer samples
    # than units, (Z^T Z + lambda I)^-1 Z^T = Z^T (Z Z^T + lambda I)^-1 solves S x S, not H x H.
    G = Zf @ Zt if S < H else Zt @ Zf  # (..., S, S) or (..., H, H); either trace is sum |Zf|^2
    lam = ridge * np.trace(G, axis1=-2, axis2=-1) / n[..., 0]
    lam = np.where(lam > 0, lam, ridge)[..., None, None]
    if S < H:
        score = (Z @ (Zt @ np.linalg.solve(G + lam * np.eye(S), yc[..., None])))[..., 0] + y_mean
    else:
        score = (Z @ np.linalg.solve(G + lam * np.eye(H), Zt @ yc[..., None]))[..., 0] + y_mean
    correct = ((score > 0) == (y > 0)) & ~fit
    return correct.sum(axis=-1), (~fit).sum(axis=-1)


def probe_accuracy(reps, labels, *, ridge: float = RIDGE, cross_fit: bool = True) -> np.ndarray:
    """Test accuracy of a closed-form ridge probe of the binary ``labels`` from ``reps``.

    Args:
      reps: (..., S, H) representations of S samples (one task's saved test samples, any
        leading axes: repeats, tasks, snapshots).
      labels: (..., S) binary labels (0 / 1) of the samples.
      ridge: lambda relative to the mean squared norm of the centred fitting rows.
      cross_fit: test each half with the probe fitted on the other and pool the two (every
        sample tested once); else fit on fold 0 and test on fold 1 only.

    Returns:
      float64 array (...): the fraction of tested samples whose label the probe predicts; NaN
      where the representations are not all finite, or where a class has fewer than 2 samples
      (a fold would lack it). Folds, centring and the solve: module docstring.
    """
    X = np.asarray(reps, dtype=np.float64)
    labels = np.asarray(labels)
    if X.ndim < 2 or labels.shape != X.shape[:-1]:
        raise CljaxError(f"probe_accuracy needs reps (..., S, H) and labels (..., S); got {X.shape} and {labels.shape}")
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        raise CljaxError("probe_accuracy needs binary labels 0 / 1")
    # A task whose representations are not all finite (a diverged network) has no probe accuracy,
    # nor one with under 2 samples of a class: a probe fitted on a fold without a class predicts
    # one label for every sample, a chance figure, not a measurement.
    n1 = (labels == 1).sum(axis=-1)
    finite = np.isfinite(X).all(axis=(-2, -1)) & (n1 >= 2) & (labels.shape[-1] - n1 >= 2)
    X = np.where(finite[..., None, None], X, 0.0)
    y = np.where(labels == 1, 1.0, -1.0)
    fold1 = probe_folds(labels)
    correct, tested = _fit_and_test(X, y, ~fold1, ridge)  # fit on fold 0, test fold 1
    if cross_fit:
        c2, t2 = _fit_and_test(X, y, fold1, ridge)
        correct, tested = correct + c2, tested + t2
    return np.where(finite, correct / np.maximum(tested, 1), np.nan)


def head_accuracy(reps, labels, kernel, bias) -> np.ndarray:
    """Accuracy of a dense read-out (the network's head) on given representations: (..., S, H),
    (..., S), kernel (..., H, O), bias (..., O) -> (...). One output: label 1 when the logit is
    positive (sigmoid); two: the larger logit (softmax), as the training code decides. NaN where
    a logit is not finite (a diverged network has no accuracy here, as in ``probe_accuracy``)."""
    with np.errstate(invalid="ignore", over="ignore"):  # a diverged network's NaN or inf: NaN accuracy below
        logits = np.asarray(reps, np.float64) @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)[..., None, :]
    pred = logits[..., 0] > 0 if logits.shape[-1] == 1 else np.argmax(logits, axis=-1) == 1
    accuracy = (pred == (np.asarray(labels) == 1)).mean(axis=-1)
    return np.where(np.isfinite(logits).all(axis=(-2, -1)), accuracy, np.nan)


# ---- the analysis ``probe`` (registered by cljax.analysis.analyses) ---------------------------------
def init(ctx: RunContext) -> dict:
    return {"ctx": ctx, "ridge": ctx.options.probe_ridge, "probe": [], "head_same": [], "head": [], "ids": [],
            "S": None, "folds": None, "schedule": {}}


def _saved_head(folder: TaskFolder, H: int):
    """The head each saved task slot is read through at the last snapshot, kernel (R, K, H, O)
    and bias (R, K, O), when the head is a dense layer on the saved representation; else None.
    Under ``--head multi`` slot k's task j has its own block of outputs, j * O ... (j + 1) * O
    (cljax/heads.py); otherwise every slot reads the whole layer."""
    head = folder.weights.get(CLASSIFIER_GROUP) if isinstance(folder.weights, dict) else None
    if not isinstance(head, dict) or "kernel" not in head or "bias" not in head:
        return None
    kernel, bias = np.asarray(head["kernel"])[-1], np.asarray(head["bias"])[-1]  # (R, H, units), (R, units)
    if kernel.ndim != 3 or kernel.shape[1] != H:
        return None
    config = folder.metadata.get("config") or {}
    if config.get("head") != "multi":
        return kernel[:, None], bias[:, None]
    O = int(config.get("out_dim", 1))
    if kernel.shape[-1] != folder.num_tasks * O:
        return None
    cols = np.maximum(folder.eval_task_ids, 0)[:, None] * O + np.arange(O)  # (K, O); an empty slot is NaN later
    return np.moveaxis(kernel[:, :, cols], 2, 1), bias[:, cols]


def update(state: dict, folder: TaskFolder) -> dict:
    """Each value is kept per saved slot, (R, K), as the folder saved it (cljax.analysis.band)."""
    reps = np.asarray(folder.representations[-1], dtype=np.float64)  # (R, K, S, H), the saved slots
    labels = np.asarray(folder.binary_labels[-1])  # (R, K, S)
    if state["folds"] is None:  # the saved samples' classes are the same in every folder
        state["S"], state["folds"] = reps.shape[-2], fold_sizes(labels)
    head_all = np.asarray(folder.test_acc_slots[-1], dtype=np.float64)  # (R, K), NaN where not evaluated
    # A slot without a task is NaN in every column; so is one whose accuracy on all test images is
    # not finite (a diverged network: BWT leaves its repeat out), though the S saved images may
    # still give finite numbers: every column and the forgetting pair then leave out what BWT does.
    kept = (folder.eval_task_ids >= 0) & np.isfinite(head_all)
    state["probe"].append(np.where(kept, probe_accuracy(reps, labels, ridge=state["ridge"]), np.nan))
    head = _saved_head(folder, reps.shape[-1])
    head_same = np.full(reps.shape[:2], np.nan) if head is None else head_accuracy(reps, labels, *head)
    state["head_same"].append(np.where(kept, head_same, np.nan))
    state["head"].append(head_all)
    state["ids"].append(folder.eval_task_ids)
    state["schedule"] = folder.metadata.get("schedule") or {}  # the last folder's: its task's cycle pair
    return state


def _drop(band: Band) -> np.ndarray:
    """mean over j < n-1 of (value after task j - value at the end), per repeat (= -BWT): over the
    terms whose two entries were evaluated, as BWT's; a non-finite one (a diverged repeat) makes
    the repeat's mean non-finite, so the spread leaves it out, as it leaves it out of BWT."""
    n = band.values.shape[1]
    if n < 2:
        return np.full(band.values.shape[0], np.nan)
    (last, ev_last), (diagonal, ev_diag) = band.row(n - 1, n), band.diagonal()
    terms = (np.arange(n) < n - 1) & ev_last & ev_diag
    return masked_mean(diagonal - last, terms)


def _drop_terms(band: Band) -> int:
    """How many tasks j < n-1 :func:`_drop` takes: both entries evaluated, BWT's terms."""
    n = band.values.shape[1]
    return int(((np.arange(n) < n - 1) & band.row(n - 1, n)[1] & band.diagonal()[1]).sum()) if n > 1 else 0


def trained_gain(probe: Band) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The probe's baseline: per repeat, the mean over the tasks j, 1 <= j < n-1, of task j's
    probe accuracy before its task (folder j-1), right after (folder j) and at the end (folder
    n-1), each (R,), over the tasks whose three entries were evaluated (their count is the last
    value). Task 0 has no before (the untrained network's representations are not saved), the
    last task's end is its after. A non-finite entry makes its repeat's means non-finite."""
    n = probe.values.shape[1]
    j = np.arange(1, max(n - 1, 1))
    (before, ev_b), (after, ev_a), (end, ev_e) = (probe.take(j - 1, j), probe.take(j, j),
                                                  probe.take(np.full_like(j, n - 1), j))
    terms = ev_b & ev_a & ev_e
    return (*(masked_mean(v, terms) for v in (before, after, end)), int(terms.sum()))


def kept_share(before, after, end, min_gain: float) -> tuple[np.ndarray, int]:
    """(end - before) / (after - before) per repeat, from its means over tasks, and how many
    finite repeats have no gain to share: NaN where after - before < ``min_gain`` (one image of
    the S a probe tests per task: below it the ratio divides by the probe's resolution)."""
    gain = after - before
    finite = np.isfinite(before) & np.isfinite(after) & np.isfinite(end)
    no_gain = finite & (gain < min_gain)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(no_gain, np.nan, (end - before) / gain), int(no_gain.sum())


def _baseline(probe: Band, S: int, measured: bool, cycle: bool) -> dict:
    """summary["probe"]["trained_gain"]: before / after / end and the kept share (trained_gain)."""
    before, after, end, n_tasks = trained_gain(probe)
    n = probe.values.shape[1]
    why = ("not measured: under 2 saved images of a class per task" if not measured else
           f"it needs 3 task folders or more, and there {'is' if n == 1 else 'are'} {n}: a task's gain is read in "
           "the folder before its task, its own and the last, which only the tasks between the first and the last "
           "have (task 0 has no folder before it: the untrained network's representations are not saved)" if n < 3
           else "no task folder holds a task's representations from before its task: --eval-tasks seen, current and "
           "window:K evaluate a task only once it is trained (only --eval-tasks all saves a task's representations "
           "before its task); a run with --eval-tasks all measures it" if not n_tasks else None)
    share, n_no_gain = kept_share(before, after, end, 1.0 / max(S, 1))
    kept = spread(share)
    kept.update(n_nonfinite=kept["n_nonfinite"] - n_no_gain, n_no_gain=n_no_gain)  # no gain: not a divergence
    # The same ratio of the means over the repeats with all three finite: one figure, no spread, but
    # not thrown about by a repeat whose gain is a few images (the per-repeat ratio divides by it).
    finite = np.isfinite(before) & np.isfinite(after) & np.isfinite(end)
    means = [float(v[finite].mean()) if finite.any() else np.nan for v in (before, after, end)]
    of_means = float(kept_share(*(np.array([m]) for m in means), 1.0 / max(S, 1))[0][0])
    return {"n_tasks": n_tasks,
            **{k: undefined(why) if why else spread(v) for k, v in (("before", before), ("after", after),
                                                                      ("end", end))},
            "kept": undefined(why) if why else kept,
            "kept_of_means": None if why or not np.isfinite(of_means) else of_means,
            "definition": "probe accuracy of task j (1 <= j < n-1) at the last snapshot of folder j-1 (before its "
                          "task" + (", whose class pair an earlier task of the cycle may have trained" if cycle else "")
                          + "), of folder j (after) and of the last folder (end), each repeat's mean over those "
                          "tasks; kept = (end - before) / (after - before) per repeat, undefined (n_no_gain) where "
                          "after - before is under one image of S; kept_of_means: the same of the means over the "
                          "repeats with all three finite"}


def _other_pairs(named, ids_last, last: int, schedule: dict, figure) -> dict | None:
    """Under --task-schedule cycle, the earlier tasks whose class pair differs from the last
    task's (task j trains cycle pair j mod P): the same figures as earlier_tasks without the
    earlier visits of the last task's pair, which are the pair just trained. None otherwise."""
    if schedule.get("task_schedule") != "cycle" or not schedule.get("n_pairs"):
        return None
    P = int(schedule["n_pairs"])
    earlier = (ids_last >= 0) & (ids_last < last)
    other = earlier & (ids_last % P != last % P)
    out = {"n_pairs": P, "n_same_pair_as_last": int((earlier & ~other).sum()), "n_tasks": int(other.sum())}
    for k, band in named:
        out[k] = (figure(masked_mean(band.values[:, last], other), k) if other.any() else
                  undefined("no earlier task of another pair than the last task's was evaluated"))
    return out


def finalize(state: dict):
    from cljax.analysis import plots  # matplotlib: here, not where a training run fits its probes (cljax.records)
    from cljax.analysis.registry import Result  # the registry imports this module (RIDGE)

    n, S, T = state["ctx"].n_folders, state["S"], state["ctx"].n_eval_tasks
    probe, head_same, head = (Band.stack(state[k], state["ids"], T) for k in ("probe", "head_same", "head"))
    last = n - 1
    d_head, d_probe = _drop(head_same), _drop(probe)
    named = (("head_acc", head), ("head_acc_probe_images", head_same), ("probe_acc", probe))
    measured = state["folds"][0] >= 2  # a fold without a class: no probe (probe_accuracy)
    not_measured = f"{S} saved images per task; a probe needs 2 of each class, so 4 or more (cljax run --n-subsamples)"
    labels = {"head_acc": "head (all test images)", "head_acc_probe_images": "head (probe images)",
              "probe_acc": "linear probe" if measured else
              f"linear probe: not measured\n({S} images per task, under 2 of each class)"}
    earlier = {k: v.mean_earlier() for k, v in named}  # (R, n): after folder i, over the tasks j < i
    n_earlier = int(((probe.ids[last] >= 0) & (probe.ids[last] < last)).sum())  # evaluated

    def figure(values, name: str, needs_earlier: bool = False) -> dict:
        """The spread, or why no repeat can have a value (NaN by definition, not a divergence)."""
        if needs_earlier and (n < 2 or not n_earlier):
            return undefined("no earlier task: one task folder" if n < 2 else
                             "the last task folder evaluated no earlier task (--eval-tasks)")
        return spread(values) if measured or name == "head" else undefined(f"not measured: {not_measured}")

    cycled = _other_pairs(named, probe.ids[last], last, state["schedule"],
                          lambda v, k: figure(v, "probe" if k == "probe_acc" else "head"))
    summary = {
        "images": {"saved_per_task": S, "fit_per_probe": state["folds"][0], "fold_sizes": list(state["folds"]),
                   "tested_per_task": S if measured else 0,
                   "how": "two folds, each class's first half (rounded down) in fold 0; each fold tested by the probe "
                          "fitted on the other; no probe under 2 samples of a class; cljax run --n-subsamples sets S"},
        "ridge": state["ridge"],
        "snapshot": "last of each task folder",
        "earlier_tasks": {"n_tasks": n_earlier,
                          **{k: figure(earlier[k][:, last], "probe" if k == "probe_acc" else "head", True)
                             for k, _ in named},
                          **({"other_pairs_than_last": cycled} if cycled else {})},
        "trained_gain": _baseline(probe, S, measured, bool(cycled)),
        "current_task": {k: figure(v.diagonal()[0][:, last], "probe" if k == "probe_acc" else "head")
                         for k, v in named},
        "forgetting": {"n_terms": _drop_terms(probe),  # fewer than n - 1 under --eval-tasks window:K
                       "head": figure(d_head, "head", True), "representation": figure(d_probe, "probe", True),
                       "readout": figure(d_head - d_probe, "probe", True),
                       "definition": "mean over j < n-1 of acc after task j - acc at the end, on the probe images; "
                                     "readout = head - representation"},
        "earlier_tasks_per_folder": {k: [spread(earlier[k][:, i])["mean"] for i in range(n)]
                                     for k in ("head_acc", "probe_acc")},
    }
    arrays = {**({k: v.dense() for k, v in named} if probe.keeps_dense else {}),
              **({} if probe.is_dense else {**{f"{k}_band": v.values for k, v in named}, "band_task_ids": probe.ids}),
              "images": np.array([state["folds"][0], S], dtype=np.int64)}
    every_earlier = probe.every_earlier_evaluated()
    return Result(
        summary={"probe": summary},
        arrays={"probe.npz": arrays},
        plots={"probe.png": lambda p: plots.plot_head_vs_probe(
            {labels[k]: earlier[k] for k, _ in named},
            {labels[k]: v.row(last, n)[0] for k, v in named}, p,
            every_task_evaluated=every_earlier,
            evaluated=(bool(((probe.ids >= 0) & (probe.ids < np.arange(n)[:, None]))[1:].any()),
                       bool(probe.row(last, n)[1].any())))},
    )
