"""Unit layers: the part of the model contract used by the options that reset hidden units
(``--use-cbp``, ``--use-redo``).

A model that supports them has a method ``unit_layers(self) -> ((layer, reader), ...)``: each
hidden layer whose output units may be reset, named by the top-level parameter of the layer that
computes them (the units' incoming weights are that layer's ``kernel`` along its last axis and
its ``bias``) and of the layer that reads them (their outgoing weights are the reader's
``kernel`` along its second-to-last axis: a dense layer's inputs, a convolution's input
channels). Its forward pass calls :func:`sow_units` with each such layer's output after the
nonlinearity (after the pool, for a convolution), (B, U) per example and unit, averaged over
spatial positions.

:func:`sow_units` does nothing unless the caller asks for the collection, so a model's compiled
training program is the same with or without these calls; :func:`unit_activity` asks for it.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.errors import CljaxError

# Flax's init leaves this collection out by default, so the sown values never become state.
UNITS_COLLECTION = "intermediates"
_SUFFIX = "_units"


def sow_units(module: nn.Module, layer: str, activity_BU) -> None:
    """Record ``layer``'s per-unit activity (B, U) when the caller collects it."""
    if module.is_mutable_collection(UNITS_COLLECTION):
        # float32 whatever the compute dtype; named apart from the layer, whose name is its scope
        module.sow(UNITS_COLLECTION, layer + _SUFFIX, activity_BU.astype("float32"))


def unit_layers(net, option_flag: str) -> tuple[tuple[str, str], ...]:
    """The model's (layer, reader) pairs, or one CljaxError line naming the flag and the fix;
    the declaration is checked against the model's params and the activity it sows (shapes only)."""
    declared = getattr(net.module, "unit_layers", None)
    name = type(net.module).__name__
    if declared is None or net.state_collections:
        raise CljaxError(f"{option_flag} resets hidden units, which needs a model that declares them (cnn, mlp; a "
                         f"plugin model: unit_layers() and sow_units, cljax/models/units.py) and has no mutable "
                         f"state; {name} does not: choose --model cnn or mlp.")
    layers = tuple(declared())
    params, state = jax.eval_shape(net.init, jax.random.key(0))
    images = jax.ShapeDtypeStruct((2, *net.image_shape), jnp.uint8)
    for layer, reader in layers:
        for part in (layer, reader):
            if "kernel" not in params.get(part, {}):
                raise CljaxError(f"{option_flag}: {name}.unit_layers() names {part!r}, which is not a top-level layer "
                                 f"with a kernel (it has {', '.join(params)}): name the layers by their parameters.")
    sown = jax.eval_shape(lambda p, s, x: unit_activity(net, p, s, x), params, state, images)
    for layer, _ in layers:
        want = (2, params[layer]["kernel"].shape[-1])
        got = getattr(sown.get(layer), "shape", None)
        if got != want:
            raise CljaxError(f"{option_flag}: {name} sows the activity of {layer!r} with shape {got} for a batch of 2, "
                             f"not {want}: call sow_units(self, {layer!r}, activity) in its forward pass.")
    return layers


def unit_activity(net, params, model_state, images) -> dict:
    """Each unit layer's activity on ``images`` (evaluation mode): {layer: (B, U)}."""
    _, sown = net.module.apply({"params": params, **model_state}, images, train=False, mutable=[UNITS_COLLECTION])
    return {name.removesuffix(_SUFFIX): values[0] for name, values in sown.get(UNITS_COLLECTION, {}).items()}


@functools.lru_cache(maxsize=8)
def unit_widths(model: str, model_params, outputs: int) -> tuple[int, ...] | None:
    """The widths of one of cljax's own models' unit layers, from its parameters' shapes for 28x28
    images (they do not depend on the image's size); () for a model that declares none (the run
    refuses a unit option on it); None where they are not known here: a plugin's model, whose
    widths may follow the image's size."""
    from cljax.models import ModelContext, build_model, make_net
    from cljax.registry import MODELS, is_builtin

    if model not in MODELS or not is_builtin(MODELS[model].build):
        return None
    module = build_model(model, model_params, ModelContext(outputs, (28, 28), "lax"))
    declared = getattr(module, "unit_layers", None)
    if declared is None:
        return ()
    # The key made inside the traced function: a concrete key would start JAX's backend here, in
    # the settings' checks, before the run splits the CPU into one device per core (the run then
    # took the one device the backend had started with).
    params, _ = jax.eval_shape(lambda: make_net(module, (28, 28)).init(jax.random.key(0)))
    return tuple(int(params[layer]["kernel"].shape[-1]) for layer, _ in declared())
