"""Networks behind the model registry, and the contract they share.

A model is a Flax module built by its registry entry from its params dataclass and a
:class:`ModelContext`. ``module(images, train=False)`` returns ``(logits_BxO, hidden_BxH)``:
``images`` arrive as uint8, (B, H, W) or (B, H, W, C), and are converted to float inside the
network (:func:`as_float_images`), so data stays one byte per pixel on the device; ``hidden`` is
the representation saved in snapshots. A top-level parameter named ``head``
(:data:`CLASSIFIER_GROUP`) is the classifier group; all others are feature layers (for the
per-group learning rates).

:func:`make_net` binds a module for training as pure functions over one repeat (:class:`Net`),
carrying the mutable collections (BatchNorm's ``batch_stats``) next to the params.

Each model lives in a module of this package (``cnn``, ``mlp``, ``resnet``) and registers itself
on import; the registry imports them on first use. ``im2col`` is the CNN's CPU convolution,
``fused`` its first layer as one elementwise computation.
"""

from __future__ import annotations

import inspect

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp

from cljax.errors import CljaxError
from cljax.registry import AUTO_CONV_IMPL, CONV_IMPLS, MODELS, register_model, source_file

__all__ = [
    "CLASSIFIER_GROUP",
    "CONV_IMPLS",
    "MODELS",
    "ModelContext",
    "Net",
    "as_float_images",
    "build_model",
    "check_compute_dtype",
    "check_model_outputs",
    "make_net",
    "masks_batch_statistics",
    "register_model",
    "resolve_conv_impl",
]

CLASSIFIER_GROUP = "head"


@dataclass(frozen=True)
class ModelContext:
    """What a model's builder needs besides its own params: facts of the run, not settings."""

    out_dim: int
    image_shape: tuple[int, ...]  # (H, W) or (H, W, C) of one image, from the dataset
    conv_impl: str  # one of CONV_IMPLS (resolved, never "auto")
    compute_dtype: str = "float32"  # the dtype of activations, matmuls and convolutions (--compute-dtype)


def resolve_conv_impl(choice: str) -> str:
    """``auto`` -> ``im2col`` on every backend: on the CPU, XLA:CPU's own convolution is the slow
    part of training; on an NVIDIA GPU at full float32 (the default --matmul-precision), cuDNN's
    convolutions of these small images and channel counts ran several times slower than the
    patch matmuls (docs/benchmark.md). The others are returned as they are."""
    if choice == "auto":
        return AUTO_CONV_IMPL
    if choice in CONV_IMPLS:
        return choice
    raise CljaxError(f"unknown conv implementation {choice!r}: choose one of auto, {', '.join(CONV_IMPLS)}.")


def as_float_images(images, dtype="float32"):
    """uint8 images, (B, H, W) or (B, H, W, C) -> (B, H, W, C) in [0, 1], of ``dtype`` (the
    model's compute dtype).

    A 4-d array is only rescaled, whatever its axis order (the im2col stack passes its
    channel-major transpose)."""
    x = images if images.ndim == 4 else images[..., None]
    return x.astype(dtype) * (1.0 / 255.0)  # a weak-typed scalar: the product keeps dtype


class Net(NamedTuple):
    """A model bound for training: pure functions over one repeat.

    ``init(key) -> (params, state)``, ``state`` a dict of the mutable collections (``{}`` when
    the model has none). ``apply(params, state, images, train, weights=None) -> (logits, hidden,
    new_state)``: ``train=True`` updates the mutable collections (BatchNorm uses batch statistics,
    over the examples whose ``weights`` (B,) are > 0 when the module's ``__call__`` takes a
    ``mask``), ``train=False`` uses the running averages and returns ``state`` unchanged. ``train``
    is a Python bool (it selects the program).

    ``eval_state(params, state, train_images, order) -> state``, or None: the mutable collections
    a snapshot is evaluated with, recomputed from its weights on the task's training images
    ``train_images[order[:n]]`` (``order``: a shuffle, so that the n images mix the classes). A
    module opts in with the fields ``bn_eval_images`` (> 0: how many of the images) and
    ``bn_momentum`` (its clone with momentum 0 stores one pass's batch statistics as its running
    averages: precise BatchNorm); None leaves evaluation to the running averages."""

    module: nn.Module
    init: Callable[[Any], tuple[Any, dict]]
    apply: Callable[[Any, dict, Any, bool], tuple[Any, Any, dict]]
    state_collections: tuple[str, ...]
    image_shape: tuple[int, ...]  # one image, (H, W) or (H, W, C)
    eval_state: Callable[[Any, dict, Any, Any], dict] | None = None


def masks_batch_statistics(module: nn.Module) -> bool:
    """Whether the module's ``__call__`` takes ``mask`` (B,), the examples its batch statistics count."""
    return "mask" in inspect.signature(type(module).__call__).parameters


def make_net(module: nn.Module, image_shape: tuple[int, ...], compute_dtype: str = "float32") -> Net:
    """Bind ``module`` for images of ``image_shape`` ((H, W) or (H, W, C)). A module built to
    compute in a lower ``compute_dtype`` has its logits and representation returned as float32,
    so the loss, the metrics and what is saved are computed as at full precision.

    The mutable collections are found by tracing the module's init once (shapes only). A model
    without them is applied as ``module.apply({"params": params}, images, train=train)`` and
    nothing else, so its compiled program does not depend on this wrapper."""
    example = jnp.zeros((1, *image_shape), jnp.uint8)
    shapes = jax.eval_shape(lambda key: module.init(key, example, train=False), jax.random.key(0))
    state_collections = tuple(sorted(name for name in shapes if name != "params"))

    def init(key):
        variables = module.init(key, example, train=False)
        return variables["params"], {name: variables[name] for name in state_collections}

    if not state_collections:

        def apply(params, state, images, train: bool, weights=None):  # no batch statistics: weights unused
            logits, hidden = module.apply({"params": params}, images, train=train)
            return logits, hidden, state

    else:
        # A module whose __call__ takes ``mask`` (B,) gets the examples that count in training
        # (weight > 0): its batch statistics and running averages leave the others out, such as
        # the empty replay slots before the first task ends. A module without it sees every example.
        takes_mask = masks_batch_statistics(module)

        def apply(params, state, images, train: bool, weights=None):
            variables = {"params": params, **state}
            if not train:
                logits, hidden = module.apply(variables, images, train=False)
                return logits, hidden, state
            mask = {"mask": weights > 0} if takes_mask and weights is not None else {}
            (logits, hidden), updated = module.apply(variables, images, train=True, mutable=list(state_collections),
                                                     **mask)
            return logits, hidden, {name: updated[name] for name in state_collections}

    if jnp.dtype(compute_dtype) != jnp.float32:  # logits and representation leave the network as float32
        low_precision_apply = apply

        def apply(params, state, images, train: bool, weights=None):
            logits, hidden, state = low_precision_apply(params, state, images, train, weights)
            return logits.astype(jnp.float32), hidden.astype(jnp.float32), state

    return Net(module=module, init=init, apply=apply, state_collections=state_collections, image_shape=tuple(image_shape),
               eval_state=_recomputed_statistics(module, state_collections))


def _recomputed_statistics(module: nn.Module, state_collections: tuple[str, ...]):
    """``Net.eval_state`` of a module with ``bn_eval_images`` > 0 and ``bn_momentum``, else None:
    one training-mode pass of its clone with momentum 0 over ``bn_eval_images`` of the images
    leaves the batch statistics of those images, with these weights, as the running averages."""
    n = getattr(module, "bn_eval_images", 0)
    if not state_collections or n <= 0 or not hasattr(module, "bn_momentum"):
        return None
    batch_statistics = module.clone(bn_momentum=0.0)

    def eval_state(params, state, train_images, order):
        _, updated = batch_statistics.apply({"params": params, **state}, train_images[order[:n]], train=True,
                                            mutable=list(state_collections))
        return {name: updated[name] for name in state_collections}

    return eval_state


def build_model(name: str, params, ctx: ModelContext) -> nn.Module:
    """The registered model ``name`` built from its params and the run's context."""
    module = MODELS[name].build(params, ctx)
    if not isinstance(module, nn.Module):
        raise CljaxError(f"model {name!r}: its builder returned a {type(module).__name__}, not a flax.linen.Module: "
                         f"return one.")
    call = type(module).__call__
    try:
        inspect.signature(call).bind(module, "images", train=False)
    except TypeError:  # it must take train: cljax passes it by name, at init and at every call
        code = getattr(inspect.unwrap(call), "__code__", None)  # flax wraps it: the user's own line
        line = getattr(code, "co_firstlineno", None)
        raise CljaxError(f"model {name!r}: its __call__{inspect.signature(call)} ({source_file(inspect.unwrap(call))}"
                         f"{f', line {line}' if line else ''}) cannot be called as (images, train=...): write it as "
                         f"__call__(self, images, train: bool = False), any further argument with a default.") from None
    return module


def check_model_outputs(net: Net, name: str, outputs: int, needs_head: str | None = None) -> None:
    """One CljaxError line when a model breaks the contract in a way training would not report:
    ``(logits, hidden)`` with logits (B, outputs) (``out_dim`` times the heads; a model that
    ignores ``ModelContext.out_dim`` would train one logit and record two) and hidden (B, ...);
    ``needs_head``: the setting that needs the output layer as the top-level parameter group
    :data:`CLASSIFIER_GROUP` (without it, that setting would silently act on nothing)."""
    params, state = jax.eval_shape(net.init, jax.random.key(0))
    example = jax.ShapeDtypeStruct((2, *net.image_shape), jnp.uint8)
    out = jax.eval_shape(lambda p, s, x: net.module.apply({"params": p, **s}, x, train=False), params, state, example)
    fix = f"model {name!r} must return (logits, hidden) with logits (batch, {outputs}) and hidden (batch, ...)"
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise CljaxError(f"{fix}; it returns {type(out).__name__}"
                         f"{f' of {len(out)}' if isinstance(out, (tuple, list)) else ''}: return the pair.")
    logits, hidden = out
    if getattr(logits, "shape", None) != (2, outputs) or len(getattr(hidden, "shape", ())) < 2 \
            or hidden.shape[0] != 2:
        raise CljaxError(f"{fix}; for a batch of 2 it returns logits {getattr(logits, 'shape', None)} and hidden "
                         f"{getattr(hidden, 'shape', None)}: size its output layer by ModelContext.out_dim.")
    if needs_head and CLASSIFIER_GROUP not in params:
        raise CljaxError(f"{needs_head} acts on the output layer, the parameter group {CLASSIFIER_GROUP!r}, which model "
                         f"{name!r} does not have (it has {', '.join(params)}): name its output layer "
                         f"{CLASSIFIER_GROUP!r}, or run without it.")


def check_compute_dtype(net: Net, name: str, compute_dtype: str) -> None:
    """One CljaxError line when a model asked to compute in a lower dtype does not: a model
    builder that ignores ``ModelContext.compute_dtype`` would otherwise run in float32 and record
    bfloat16. Read off the traced forward pass: some matmul or convolution must take operands of
    that dtype."""
    if jnp.dtype(compute_dtype) == jnp.float32:
        return
    params, state = jax.eval_shape(net.init, jax.random.key(0))
    example = jax.ShapeDtypeStruct((2, *net.image_shape), jnp.uint8)
    jaxpr = jax.make_jaxpr(lambda p, s, x: net.apply(p, s, x, True))(params, state, example)

    def eqns(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from eqns(sub)

    if not any(e.primitive.name in ("dot_general", "conv_general_dilated") and
               any(v.aval.dtype == jnp.dtype(compute_dtype) for v in e.invars) for e in eqns(jaxpr.jaxpr)):
        raise CljaxError(f"--compute-dtype {compute_dtype}: model {name!r} computes in float32 (its builder ignores "
                         "ModelContext.compute_dtype): pass it to the model's layers, or run with --compute-dtype float32.")
