"""How exactly two results must agree, on the backend the tests run on: the suite's one policy.

On the CPU, programs that compute the same maths in another lowering (vmapped or looped
repeats, chunked or resident evaluation, paired or separate learner and expert) are bit
identical, or agree within a stated CPU tolerance, and the tests keep asserting exactly that. On
a GPU two separately compiled programs are not bit identical in general (other fusions, cuBLAS
and cuDNN algorithms chosen by timing for each compilation, other summation orders): there a
comparison allows the GPU tolerance its caller states and explains (``why``, which a failure
prints). Accuracies are means over n samples, so a near-tie that rounds the other way moves one
by 1/n: on a GPU they may differ by a few flipped predictions, never by an arbitrary amount.

The backend is read when a comparison runs, not on import: tests/test_sharding.py splits the
CPU into devices in its subprocess before JAX starts.
"""

from __future__ import annotations

import jax
import numpy as np


# A float32 result against the same maths compiled separately (another lowering, another
# batching), on a GPU: each matmul or convolution at "highest" may sum in another order or by
# another cuBLAS/cuDNN algorithm (~1e-6 relative); through the CNN's five layers and a few SGD
# steps that stays well within 1e-4 relative. 1e-5 absolute for entries near zero (trained
# weights are of order 0.1, losses and representations of order 1).
SEPARATELY_COMPILED = dict(gpu_rtol=1e-4, gpu_atol=1e-5)
# Predictions whose logit is within that rounding of the decision boundary may fall the other
# way: on the suite's small test sets (tens of images) that is rare, so one per accuracy.
FLIPS = 1
# A bfloat16 result (saved representations): a float32 difference of SEPARATELY_COMPILED's size
# can round to the neighbouring bfloat16, one step of 2^-8..2^-7 relative.
BFLOAT16_STEP = dict(gpu_rtol=2.0 ** -7, gpu_atol=1e-5)
# The model initialiser's draw made inside another program (a reset option's fresh fan-in, drawn
# in the jitted step) against ``net.init`` called on its own: the same bits on the CPU; on a GPU
# the truncated normal's inverse error function and scaling may be fused and rounded otherwise, by
# a few float32 ulps. Another draw would differ by the weights' own size.
FRESH_DRAW = dict(gpu_rtol=1e-5, gpu_atol=1e-7)
WHY_FRESH_DRAW = "the initialiser's draw computed inside the step's program, against net.init on its own"


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def assert_same(actual, expected, *, gpu_rtol: float, gpu_atol: float, why: str, cpu_rtol: float = 0.0,
                cpu_atol: float = 0.0, err_msg: str = "") -> None:
    """Float arrays: equal on the CPU (or within ``cpu_rtol``/``cpu_atol`` where the CPU itself
    rounds differently), within ``gpu_rtol``/``gpu_atol`` on other backends. Non-float arrays
    (labels, counts) are equal everywhere."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    bfloat16 = actual.dtype.name == "bfloat16"
    if not np.issubdtype(actual.dtype, np.inexact) and not bfloat16:
        np.testing.assert_array_equal(actual, expected, err_msg=err_msg)
        return
    rtol, atol = (cpu_rtol, cpu_atol) if on_cpu() else (gpu_rtol, gpu_atol)
    if rtol == atol == 0:
        np.testing.assert_array_equal(actual, expected, err_msg=err_msg)
        if bfloat16:  # stored results: the same bytes
            assert actual.dtype == expected.dtype and actual.tobytes() == expected.tobytes(), err_msg
    else:
        actual, expected = actual.astype(np.float64), expected.astype(np.float64)
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                                   err_msg=f"{err_msg} ({jax.default_backend()} tolerance: {why})")


def assert_same_accuracy(actual, expected, n: int, *, why: str, gpu_flips: int = FLIPS, err_msg: str = "") -> None:
    """Accuracies (means over ``n`` samples): equal on the CPU; on other backends each may differ
    by at most ``gpu_flips`` predictions, ``gpu_flips / n``. NaN (a slot not evaluated) only
    where the other has NaN."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if on_cpu():
        np.testing.assert_array_equal(actual, expected, err_msg=err_msg)
        return
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=err_msg)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=gpu_flips / n + 1e-9, equal_nan=True,
                               err_msg=f"{err_msg} ({jax.default_backend()}: up to {gpu_flips} of {n} "
                                       f"predictions may flip: {why})")


def assert_same_tree(actual, expected, *, n_acc: int, gpu_rtol: float, gpu_atol: float, why: str,
                     gpu_flips: int = FLIPS, cpu_rtol: float = 0.0, cpu_atol: float = 0.0) -> None:
    """Two pytrees of the same structure, leaf by leaf: an accuracy (a dict entry named
    ``*_acc``, as in a task's trace) by :func:`assert_same_accuracy` over ``n_acc`` samples,
    every other leaf by :func:`assert_same`."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True):
        name = jax.tree_util.keystr(path)
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, name
        last = path[-1] if path else None
        if isinstance(last, jax.tree_util.DictKey) and str(last.key).endswith("_acc"):
            assert_same_accuracy(a, b, n_acc, gpu_flips=gpu_flips, why=why, err_msg=name)
        else:
            assert_same(a, b, gpu_rtol=gpu_rtol, gpu_atol=gpu_atol, cpu_rtol=cpu_rtol, cpu_atol=cpu_atol, why=why,
                        err_msg=name)


def assert_drawn_where(actual, mask, draw, otherwise, *, err_msg: str = "") -> None:
    """``actual`` is the fresh ``draw`` where ``mask`` (within FRESH_DRAW on a GPU) and exactly
    ``otherwise`` elsewhere; ``mask``, ``draw`` and ``otherwise`` broadcast to ``actual``'s shape."""
    actual = np.asarray(actual)
    mask = np.broadcast_to(mask, actual.shape)
    np.testing.assert_array_equal(np.where(mask, 0.0, actual), np.where(mask, 0.0, otherwise), err_msg=err_msg)
    assert_same(actual[mask], np.broadcast_to(draw, actual.shape)[mask], **FRESH_DRAW, why=WHY_FRESH_DRAW,
                err_msg=err_msg)
