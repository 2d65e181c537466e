"""How far the ResNet's BatchNorm running averages lag its weights: test accuracy with them and
with statistics recomputed from the weights (``--resnet-bn-eval-images``, ``Net.eval_state``).

The ResNet (defaults, im2col) is trained from scratch with SGD (lr 0.01, momentum 0.9, batch 32,
the defaults) on Fashion-MNIST pairs for S steps, once per seed; then evaluated on 500 test
images of the pair with the running averages and with the batch statistics of 256 shuffled
training images. Prints mean +- sd over pairs x seeds (docs/metrics.md has the figures).

    python benchmarks/bn_eval_lag.py [--steps 12 31 150] [--seeds 5] [--fashion-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cljax

from bench_args import one_line_errors, positive_int  # noqa: E402

PAIRS = ((0, 3), (5, 7))  # T-shirt/top vs Dress, Sandal vs Sneaker
MAX_STEPS = 2 * 6000 // 32  # Fashion-MNIST's 6000 training images a class


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bn_eval_lag.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive_int, nargs="+", default=[12, 31, 150],
                   help=f"training steps, each on its own batch of 32 (at most {MAX_STEPS}: one pass over a pair)")
    p.add_argument("--seeds", type=positive_int, default=5)
    p.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    args = p.parse_args(argv)
    if max(args.steps) > MAX_STEPS:  # a step past the pair's images would train on its last batch again
        p.error(f"--steps {max(args.steps)} is more than the {MAX_STEPS} batches of 32 a pair's 12,000 images make")

    import jax
    import jax.numpy as jnp
    import optax

    from cljax.datasets.fashion_mnist import read_folder
    from cljax.models import MODELS, ModelContext, build_model, make_net

    data = read_folder(Path(args.fashion_dir))
    params = MODELS["resnet"].params(bn_eval_images=256)
    net = make_net(build_model("resnet", params, ModelContext(1, (28, 28), "im2col")), (28, 28))
    tx = optax.sgd(0.01, momentum=0.9)

    def loss(p, s, x, y):
        logits, _, new_state = net.apply(p, s, x, True, jnp.ones(x.shape[0]))
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], y).mean(), new_state

    def train(p, s, x, y, steps):
        def step(carry, i):
            p, s, o = carry
            batch = (jax.lax.dynamic_slice_in_dim(x, i * 32, 32), jax.lax.dynamic_slice_in_dim(y, i * 32, 32))
            (_, s), g = jax.value_and_grad(loss, has_aux=True)(p, s, *batch)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), s, o), None

        return jax.lax.scan(step, (p, s, tx.init(p)), jnp.arange(steps))[0][:2]

    train = jax.jit(train, static_argnums=4)
    accuracy = jax.jit(lambda p, s, x, y: ((net.apply(p, s, x, False)[0][:, 0] > 0) == (y > 0.5)).mean())
    eval_state = jax.jit(net.eval_state)
    report = {}
    for steps in args.steps:
        running, recomputed = [], []
        for a, b in PAIRS:
            train_ids = np.flatnonzero((data.train_labels == a) | (data.train_labels == b))
            test_ids = np.flatnonzero((data.test_labels == a) | (data.test_labels == b))[:500]
            x_test = jnp.asarray(data.test_images[test_ids])
            y_test = jnp.asarray((data.test_labels[test_ids] == b).astype(np.float32))
            for seed in range(args.seeds):
                ids = np.random.default_rng(seed).permutation(train_ids)[: max(steps * 32, 256)]
                x, y = jnp.asarray(data.train_images[ids]), jnp.asarray((data.train_labels[ids] == b).astype(np.float32))
                p, s = train(*net.init(jax.random.key(seed)), x, y, steps)
                running.append(float(accuracy(p, s, x_test, y_test)))
                recomputed.append(float(accuracy(p, eval_state(p, s, x, jnp.arange(x.shape[0])), x_test, y_test)))
        run, pre = np.array(running), np.array(recomputed)
        report[steps] = {"running": running, "recomputed": recomputed}
        print(f"{steps} steps: running averages {run.mean():.3f} +- {run.std(ddof=1):.3f}, recomputed "
              f"{pre.mean():.3f} +- {pre.std(ddof=1):.3f} (n = {len(run)}); at chance (<= 0.55): "
              f"{int((run <= 0.55).sum())} vs {int((pre <= 0.55).sum())}", flush=True)
    return report


if __name__ == "__main__":
    one_line_errors(main)
