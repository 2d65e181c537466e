"""LAPACK kernels one at a time in a compiled analysis: for GLUE, and for a plugin's own.

jaxlib 0.10's CPU kernels of batched decompositions (SVD, eigenvalues, Cholesky factors,
triangular solves) hand chunks of their batch to XLA's intra-op thread pool and block until the
chunks are done. XLA:CPU runs independent operations of a program at once: as many such kernels
in flight as the pool has threads (two on a 2-core host) leave no thread to run a chunk, and the
program never ends (gdb: every pool thread in ``ParallelBatchMap`` -> ``BlockingCounter::Wait``).
One kernel at a time always leaves it a thread.

- :func:`after` makes an array wait for others: give each decomposition's input ``after`` the
  one before it, and they run one after another; :func:`map_in_chunks` maps a function over
  chunks of a batch that way;
- :func:`unordered_lapack_pairs` reads a compiled program's HLO text and lists the operations
  that run LAPACK kernels and could run at once: ``[]`` for an ordered program. A hang shows
  only now and then; this checks its cause every time.

A plugin analysis that jits several decompositions together checks its program with
``unordered_lapack_pairs(jax.jit(f).lower(*args).compile().as_text())``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

LAPACK = 'custom_call_target="lapack_'  # how the HLO text names a CPU LAPACK kernel's call


def after(done, x):
    """``x``, made to wait for ``done`` (arrays, or a tree of them). The wait is a data dependency,
    x + (the sum of 0 * each finite value of ``done``), which leaves x's value as it is (-0.0
    becomes 0.0); ``lax.optimization_barrier`` does not order anything here, as XLA:CPU removes
    it before it schedules the program."""
    leaves = [jnp.ravel(a).astype(x.dtype) for a in jax.tree.leaves(done)]
    return x + sum(jnp.sum(0.0 * jnp.where(jnp.isfinite(a), a, 0.0)) for a in leaves)


def map_in_chunks(f, xs, chunk: int):
    """``jax.vmap(f)`` over the leading axis of the tree ``xs``, ``chunk`` slices at a time: the
    whole chunks one after another (``lax.map``), then what is left, made to wait for them. (Not
    ``lax.map``'s ``batch_size``, which runs the rest beside the chunks: two kernels in flight.)"""
    n = jax.tree.leaves(xs)[0].shape[0]
    whole = n - n % chunk
    one, parts = jax.vmap(f), []
    if whole:
        out = jax.lax.map(one, jax.tree.map(lambda a: a[:whole].reshape(whole // chunk, chunk, *a.shape[1:]), xs))
        parts.append(jax.tree.map(lambda a: a.reshape(whole, *a.shape[2:]), out))
    if whole < n:
        parts.append(one(jax.tree.map(lambda a: after(parts, a[whole:]), xs)))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts) if len(parts) > 1 else parts[0]


def computations(hlo: str) -> dict[str, dict[str, str]]:
    """Computation name -> {instruction name: the text after its '='} of an HLO module's text."""
    comps, current = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            current = comps.setdefault(head.group(1), {})
        elif line.startswith("}"):
            current = None
        elif current is not None and (inst := re.match(r"^\s+(?:ROOT )?%([\w.\-]+) = (.*)$", line)):
            current[inst.group(1)] = inst.group(2)
    return comps


def unordered_lapack_pairs(hlo: str) -> list[tuple[str, str, str]]:
    """(computation, a, b) for each two operations of a compiled program that run LAPACK kernels
    (directly, or inside a loop or call they run) and that do not depend one on the other."""
    comps = computations(hlo)
    refs = lambda text: set(re.findall(r"%([\w.\-]+)", text))  # noqa: E731
    bears: dict[str, bool] = {}

    def runs_lapack(name):
        if name not in bears:
            bears[name] = False  # a computation does not call itself
            bears[name] = any(runs(text) for text in comps[name].values())
        return bears[name]

    def runs(text):
        return LAPACK in text or any(r in comps and runs_lapack(r) for r in refs(text))

    pairs = []
    for name, insts in comps.items():
        ancestors: dict[str, set] = {}

        def above(inst):
            if inst not in ancestors:
                ancestors[inst] = set()
                for r in refs(insts[inst]) & insts.keys():
                    ancestors[inst] |= {r} | above(r)
            return ancestors[inst]

        heavy = [i for i, text in insts.items() if runs(text)]
        pairs += [(name, a, b) for k, a in enumerate(heavy) for b in heavy[k + 1:]
                  if a not in above(b) and b not in above(a)]
    return pairs
