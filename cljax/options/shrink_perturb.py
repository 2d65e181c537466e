"""Shrink and perturb (``--add-plasticity``, tag ``sp``), Ash & Adams 2020, "On Warm-Starting
Neural Network Training" (NeurIPS): every parameter of the learner becomes

    theta <- lam * theta + sigma * eps,      eps = init_fn(key)

where eps is a fresh draw of the whole parameter pytree from the model's own initialiser
(``net.init``; ``--sp-noise init``, the default) or a standard normal draw of every parameter
(``--sp-noise gaussian``), lam = ``--sp-lambda``, sigma = ``--sp-sigma``, key = the hook's key.
With ``init`` noise sigma is
in units of the initialiser's own scale, layer by layer: with Flax's LeCun-normal kernels, a
kernel's eps has standard deviation 1 / sqrt(fan_in) (fan_in = inputs of one unit: 3*3*C_in for
a 3x3 convolution, the input width for a dense layer), sigma = 1 adds a whole fresh
initialisation, and lam = 0, sigma = 1 is a re-initialisation. A parameter whose initialiser is
a constant c (the same for every key: biases at 0, BatchNorm scales at 1) has no noise to draw and
shrinks toward c, theta <- c + lam (theta - c): biases only shrink, and a BatchNorm scale keeps
its size (with eps = c it would gain sigma at every boundary: 1.13 after one task and 1.26 after
two at the defaults, with 14 = sigma / (1 - lam) as its limit). With ``gaussian`` noise every
parameter, biases and BatchNorm scales included, becomes lam theta + sigma eps, as under weight
decay plus noise: a BatchNorm scale shrinks toward 0. A model's mutable state, such as BatchNorm
statistics, is left as it is. (Schema 4 of the run record: before, eps = c.)

``--sp-mode boundary`` (hook ``task_start``): at the start of every task except the first: the
first task starts from a fresh initialisation, which there is no reason to shrink, and Ash &
Adams apply the transform when new data arrives for a network already trained.
``--sp-mode step`` (hook ``step_end``): after every optimiser step of every task (the
continuous form of Dohare et al. 2024, "Loss of plasticity in deep continual learning": an L2
penalty wd under SGD at rate lr shrinks by lam = 1 - lr * wd per step, and their noise of
absolute standard deviation s is ``--sp-noise gaussian --sp-sigma s``; their exact form, the
decay in the gradient, is ``--use-l2 --l2-decay wd`` with ``--sp-lambda 1``, docs/methods.md).

The defaults, lam = 0.99 and sigma = 0.14 at task boundaries, shrink little and leave the
expected size of weights at the initialiser's scale unchanged (lam^2 + sigma^2 = 1); the sweep
behind them is in docs/plasticity.md. A strong shrink with a small sigma compounds, task after
task, into a geometric shrink of every layer that a short task cannot regrow.
The optimiser state (momentum) is left as it is. The expert never runs options.
lam = 1, sigma = 0 returns the parameters unchanged, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Var, jaxpr_as_fun

from cljax.options import Option, register_option
from cljax.registry import param


@dataclass(frozen=True)
class ShrinkPerturbParams:
    mode: str = param("boundary", "shrink+perturb: at the start of every task after the first (boundary) or after every "
                      "step (step)", choices=("boundary", "step"))
    lambda_: float = param(0.99, "shrink+perturb: shrink factor lam", min=0.0, max=1.0, flag="sp-lambda")
    sigma: float = param(0.14, "shrink+perturb: perturbation scale sigma, in units of the initialiser's own scale "
                         "(1: a whole fresh initialisation) with --sp-noise init, absolute with gaussian", min=0.0)
    noise: str = param("init", "shrink+perturb: eps is a fresh draw of the model's initialiser (init; a parameter "
                       "it sets to a constant c, such as a bias, has no noise and becomes c + lam*(theta - c)) or a "
                       "standard "
                       "normal for every parameter (gaussian: sigma is an absolute standard deviation, as in Dohare et "
                       "al. 2024)", choices=("init", "gaussian"), absent="init")


def shrink_perturb(params, noise, lam: float, sigma: float, constants=None):
    """lam * params + sigma * noise, leaf by leaf (``noise`` has the structure of ``params``); a leaf
    whose entry in ``constants`` (flat, in leaf order) is its initialiser's constant value c
    shrinks toward c instead, c + lam * (params - c)."""
    leaves, treedef = jax.tree.flatten(params)
    constants = constants or [None] * len(leaves)
    return jax.tree.unflatten(treedef, [lam * p + sigma * e if c is None else c + lam * (p - c)
                                        for p, e, c in zip(leaves, jax.tree.leaves(noise), constants)])


def constant_leaves(net) -> list:
    """Per parameter leaf (flat, in leaf order): its value where the initialiser does not read
    the key (a constant: biases at 0, BatchNorm scales at 1), else None. Found on the traced
    initialiser, so only the constant leaves are compiled, not a draw of the whole model."""
    closed = jax.make_jaxpr(lambda k: jax.tree.leaves(net.init(k)[0]))(jax.random.key(0))
    constant = [not d for d in _reads_input(closed.jaxpr, [True])]
    if not any(constant):
        return [None] * len(constant)
    values = iter(jax.jit(lambda k: [v for v, c in zip(jaxpr_as_fun(closed)(k), constant) if c])(jax.random.key(0)))
    return [next(values) if c else None for c in constant]


def _reads_input(jaxpr, inputs: list[bool]) -> list[bool]:
    """Per output of ``jaxpr``: whether it depends on an input flagged in ``inputs``. A nested
    jit is followed inside (flax and jax.random wrap their parts in one); any other equation
    that reads a flagged value makes all its outputs depend on it."""
    flagged = {v for v, f in zip(jaxpr.invars, inputs) if f}

    def reads(v):
        return isinstance(v, Var) and v in flagged

    for eqn in jaxpr.eqns:
        ins = [reads(v) for v in eqn.invars]
        if not any(ins):
            continue
        inner = eqn.params.get("jaxpr")
        if isinstance(inner, ClosedJaxpr) and len(inner.jaxpr.invars) == len(ins) \
                and len(inner.jaxpr.outvars) == len(eqn.outvars):
            outs = _reads_input(inner.jaxpr, ins)
        else:
            outs = [True] * len(eqn.outvars)
        flagged.update(v for v, f in zip(eqn.outvars, outs) if f)
    return [reads(v) for v in jaxpr.outvars]


def _inert(params: ShrinkPerturbParams, config) -> str | None:
    if params.lambda_ == 1 and params.sigma == 0:
        return "--sp-lambda 1 with --sp-sigma 0 is the identity"
    if params.mode == "boundary" and config.num_tasks == 1:
        return "--sp-mode boundary acts as each task after the first begins, and the run has one task"
    return None


@register_option("shrink_perturb", params=ShrinkPerturbParams, prefix="sp", tag="sp", flag="add-plasticity",
                 aliases=("--shrink-perturb",), inert=_inert)
def make_shrink_perturb(params: ShrinkPerturbParams, config, net) -> Option:
    """shrink+perturb (Ash & Adams 2020): theta <- lam*theta + sigma*eps, eps per --sp-noise (docs/rules.md) (tag sp)

    eps is a fresh draw of the initialiser (``--sp-noise init``; a leaf it sets to a constant c, such
    as a bias, has none: theta <- c + lam*(theta - c)) or a standard normal draw of every leaf
    (``--sp-noise gaussian``)."""
    lam, sigma, mode, noise = params.lambda_, params.sigma, params.mode, params.noise

    if noise == "init":
        # The leaves the initialiser sets to a constant, whatever the key (None: a random leaf).
        constants = constant_leaves(net)

        def init_fn(key):
            return net.init(key)[0]
    else:
        constants = None  # gaussian noise: every leaf is perturbed
        shapes, treedef = jax.tree.flatten(jax.eval_shape(lambda k: net.init(k)[0], jax.random.key(0)))

        def init_fn(key):
            keys = jax.random.split(key, len(shapes))
            return jax.tree.unflatten(treedef, [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, shapes)])

    def apply(params, key):
        if lam == 1.0 and sigma == 0.0:
            # The identity, bit for bit (1 * (-0.0) + 0 * eps would turn a negative zero positive).
            return params
        return shrink_perturb(params, init_fn(key), lam, sigma, constants)

    def task_start(state, params, key, task_idx):
        new = apply(params, key)
        return state, jax.tree.map(lambda n, p: jnp.where(task_idx > 0, n, p), new, params)

    def step_end(state, params, model_state, key, images, weights_B):
        return state, apply(params, key)

    if mode == "boundary":
        return Option(task_start=task_start)
    return Option(step_end=step_end)
