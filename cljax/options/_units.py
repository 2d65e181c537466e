"""What the unit-resetting options (CBP, ReDo) share: per-unit statistics and the reset of a
masked set of units, in static shapes (a boolean mask per unit layer, never a gather of a
varying number of units).

Resetting unit j of layer l (its reader: the layer that reads it, ``cljax.models.units``):
    incoming: kernel_l[..., j] and bias_l[j]   <- a fresh draw of the model's initialiser
    outgoing: kernel_reader[..., j, :]         <- 0
and every array of the optimiser state that mirrors a touched parameter (same path, same
shape: SGD's momentum trace, Adam's moments) is set to 0 at the touched entries. A weight that
is both the outgoing weight of one reset unit and the incoming weight of another (consecutive
layers) takes the fresh draw: the reset unit's whole fan-in is new.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def weighted_mean_abs(activity_BU, weights_B):
    """<|h_j|> over the batch, the examples weighted as in the rule contract, (U,)."""
    w = weights_B / weights_B.sum()
    return (w[:, None] * jnp.abs(activity_BU)).sum(0)


def weighted_mean(activity_BU, weights_B):
    """<h_j> over the batch, the examples weighted as in the rule contract, (U,)."""
    w = weights_B / weights_B.sum()
    return (w[:, None] * activity_BU).sum(0)


def incoming_abs_means(params, layers):
    """{layer: (U,)}: mean |incoming weight| of each unit (the layer's kernel over every axis but
    its last; the bias left out)."""
    means = {}
    for layer, _ in layers:
        kernel = params[layer]["kernel"]
        means[layer] = jnp.abs(kernel).mean(axis=tuple(range(kernel.ndim - 1)))
    return means


def outgoing_abs_sums(params, layers):
    """{layer: (U,)}: sum of |outgoing weights| of each unit (over every axis of the reader's
    kernel but its input axis, the second-to-last)."""
    sums = {}
    for layer, reader in layers:
        kernel = params[reader]["kernel"]
        axes = tuple(a for a in range(kernel.ndim) if a != kernel.ndim - 2)
        sums[layer] = jnp.abs(kernel).sum(axis=axes)
    return sums


def _along(mask_U, shape, axis):
    """A unit mask broadcast to ``shape`` along ``axis``."""
    view = [1] * len(shape)
    view[axis] = mask_U.shape[0]
    return jnp.broadcast_to(mask_U.reshape(view), shape)


def reset_masks(params, layers, masks):
    """{(layer, leaf): (fresh_mask, zero_mask)} over the parameters the reset touches."""
    out = {}

    def add(key, shape, fresh=None, zero=None):
        f0, z0 = out.get(key, (jnp.zeros(shape, bool), jnp.zeros(shape, bool)))
        out[key] = (f0 if fresh is None else f0 | fresh, z0 if zero is None else z0 | zero)

    for layer, reader in layers:
        m = masks[layer]
        k_shape = params[layer]["kernel"].shape
        add((layer, "kernel"), k_shape, fresh=_along(m, k_shape, len(k_shape) - 1))
        if "bias" in params[layer]:
            add((layer, "bias"), params[layer]["bias"].shape, fresh=m)
        r_shape = params[reader]["kernel"].shape
        add((reader, "kernel"), r_shape, zero=_along(m, r_shape, len(r_shape) - 2))
    return out


def _zero_mirrors(opt_state, touched):
    """Set the touched entries of every optimiser-state array that mirrors a parameter to 0."""

    def fix(path, leaf):
        names = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))[-2:]
        mask = touched.get(names)
        if mask is None or getattr(leaf, "shape", None) != mask.shape:
            return leaf
        return jnp.where(mask, jnp.zeros((), leaf.dtype), leaf)

    return jax.tree_util.tree_map_with_path(fix, opt_state)


def reset_units(params, opt_state, fresh_params, layers, masks):
    """``params`` and ``opt_state`` with the units in ``masks`` ({layer: (U,) bool}) reset."""
    new = {name: dict(sub) for name, sub in params.items()}
    touched = {}
    for (layer, leaf), (fresh, zero) in reset_masks(params, layers, masks).items():
        p = params[layer][leaf]
        new[layer][leaf] = jnp.where(fresh, fresh_params[layer][leaf], jnp.where(zero, jnp.zeros((), p.dtype), p))
        touched[(layer, leaf)] = fresh | zero
    return new, _zero_mirrors(opt_state, touched)


def reset_if_any(net, params, opt_state, key, layers, masks, fresh=None, keep_opt_state: bool = False):
    """:func:`reset_units` with a fresh draw of the initialiser from ``key`` (or of
    ``fresh(key, params, fresh_params, layers)``), skipped (a ``lax.cond``) when no unit is to be
    reset. ``keep_opt_state``: the optimiser state is left as it is (CBP's --cbp-optimizer-state keep)."""
    any_reset = jnp.stack([m.any() for m in masks.values()]).any()

    def reset(operands):
        p, o = operands
        drawn = net.init(key)[0]
        drawn = drawn if fresh is None else fresh(key, p, drawn, layers)
        new_p, new_o = reset_units(p, o, drawn, layers, masks)
        return new_p, (o if keep_opt_state else new_o)

    return lax.cond(any_reset, reset, lambda operands: operands, (params, opt_state))


def uniform_fresh(key, params, drawn, layers):
    """``drawn`` with each unit layer's kernel a draw of U(-b, b), b = 1 / sqrt(its fan-in, every
    kernel axis but the last), and its bias 0: the fresh units of the authors' continual-ImageNet
    code (``init='default'``), where ``drawn`` holds the model initialiser's."""
    out = {name: dict(sub) for name, sub in drawn.items()}
    for i, (layer, _) in enumerate(layers):
        kernel = params[layer]["kernel"]
        bound = 1.0 / float(np.sqrt(np.prod(kernel.shape[:-1])))
        out[layer]["kernel"] = jax.random.uniform(jax.random.fold_in(key, i), kernel.shape, kernel.dtype, -bound, bound)
        if "bias" in out[layer]:
            out[layer]["bias"] = jnp.zeros_like(out[layer]["bias"])
    return out


def unit_widths_of(config) -> tuple[int, ...] | None:
    """The widths of the run's model's unit layers (cljax.models.units.unit_widths), for the
    options' checks of whether they would act in the run."""
    from cljax.heads import n_heads_of
    from cljax.models.units import unit_widths

    return unit_widths(config.model, config.model_params, config.out_dim * n_heads_of(config))
