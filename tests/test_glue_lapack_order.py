"""GLUE's compiled program runs its LAPACK kernels one at a time on the CPU
(cljax/analysis/order.py, which a plugin's analysis can use too).

jaxlib 0.10's CPU LAPACK kernels hand their batch to XLA's intra-op pool and block until it is
done; XLA:CPU runs independent operations at once, so two such kernels in flight on a 2-thread
pool leave no thread to run the batch, and the analysis never ends. A hang shows only now and
then, so this checks the cause instead: in every computation of the compiled program, any two
operations that run a LAPACK kernel (directly, or inside a loop they run) depend one on the
other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.analysis import glue
from cljax.analysis.order import LAPACK, after, unordered_lapack_pairs


def test_the_checker_finds_two_independent_decompositions():
    with jax.enable_x64(True):
        x = jnp.ones((8, 4, 4)) + jnp.eye(4)
        both = jax.jit(lambda a, b: (jnp.linalg.eigvalsh(a), jnp.linalg.svd(b)[1])).lower(x, x).compile().as_text()
        chained = jax.jit(lambda a: jnp.linalg.svd(after(jnp.linalg.eigvalsh(a), a))[1]).lower(x)
        chained = chained.compile().as_text()
    if LAPACK not in both:
        pytest.skip("no LAPACK kernels in this backend's program (the wait is jaxlib's CPU one)")
    assert len(unordered_lapack_pairs(both)) == 1
    assert unordered_lapack_pairs(chained) == []


@pytest.mark.parametrize("probe_chunk", [None, 1, 12], ids=["vmapped", "one", "chunks"])
@pytest.mark.parametrize("B, P, M, chunk", [(5, 4, 8, 2), (3, 2, 4, 2), (4, 2, 4, 4)])
def test_glue_runs_one_lapack_kernel_at_a_time(B, P, M, chunk, probe_chunk):
    # K = P * M points against N = 16: 32 > N takes the Woodbury step, 8 <= N the direct one; B not
    # a multiple of the chunk leaves a remainder, solved after the whole chunks. The probes all
    # vmapped (an accelerator's), one at a time, or 12 at a time and a remainder of 8 (the CPU's).
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        X = jnp.asarray(rng.normal(size=(B, P, M, 16)))
        t = jnp.asarray(rng.normal(size=(32, 16)))
        y = jnp.where(jnp.asarray(rng.normal(size=(32, P))) > 0, 1.0, -1.0)
        hlo = glue._geometry_batched.lower(X, t, y, True, 50, 1e-8, chunk, probe_chunk).compile().as_text()
    if LAPACK not in hlo:
        pytest.skip("no LAPACK kernels in this backend's program (the wait is jaxlib's CPU one)")
    assert hlo.count(LAPACK) >= 8  # the QP's Cholesky factor and solves, two SVDs, two eigvalsh
    assert unordered_lapack_pairs(hlo) == []


def test_after_keeps_the_value_and_ignores_what_is_not_finite():
    x = jnp.array([1.5, -2.0, 0.0])
    done = {"a": jnp.array([jnp.inf, jnp.nan, 3.0, 3e38, 3e38]), "n": jnp.array([7])}  # their sum would be inf
    np.testing.assert_array_equal(after(done, x), x)
