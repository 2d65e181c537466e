"""The PyTorch reference for benchmarks/throughput.py: cljax's CNN trained the way continual-
learning research code usually is: one repeat at a time, a Python loop over minibatches, a
``DataLoader`` that reshuffles the task's data every epoch, ``torch.optim.SGD``, a learner and an
expert stepping on the same batch, each step's loss and accuracy recorded. That is the work
cljax's task program does per step (it also reshuffles every epoch and records both metrics).

``style="lean"`` is the same training with less around it: batches sliced in order from one
tensor, no shuffling, no metrics. The benchmark times both; "lean" bounds what a hand-tuned
loop gets (measured against the reference: docs/benchmark.md).

``device``: "cuda" runs the nets on the GPU (the usual loop's batches come from a CPU
DataLoader and are moved per step, as such code does; the lean loop slices a device tensor).
The other peers (K processes of this loop, torch.func vmap over stacked parameters) are in
``torch_peers.py``.

Network (same as ``cljax.models.CNN``): conv 16/32/64 3x3 SAME + ReLU + max-pool 3/3, global
average pool, Dense 64 + ReLU, Dense 64 + ReLU, head 1, binary cross-entropy on the logit.
Needs ``torch`` (the ``bench`` extra: ``pip install torch==2.13.0``, a CPU wheel).
"""

from __future__ import annotations

import time

import numpy as np


def make_cnn(torch):
    nn = torch.nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in ((1, 16), (16, 32), (32, 64))])
            self.dense1, self.dense2, self.head = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 1)

        def forward(self, x_B1HW):
            x = x_B1HW
            for conv in self.convs:
                x = nn.functional.max_pool2d(torch.relu(conv(x)), 3, 3)
            x = x.mean(dim=(2, 3))
            x = torch.relu(self.dense1(x))
            return self.head(torch.relu(self.dense2(x)))[:, 0]

    return CNN()


class TorchRepeat:
    """One repeat's learner and expert on ``steps`` batches of ``batch_size`` uint8 images.
    ``__call__`` trains both for one epoch of ``steps`` steps (one timing unit) and returns the
    samples processed (steps x batch x 2). ``style``: "usual" (the reference) or "lean"."""

    def __init__(self, steps: int, batch_size: int, threads: int, lr: float = 0.05, seed: int = 0, style: str = "usual",
                 device: str = "cpu"):
        import torch

        if style not in ("usual", "lean"):
            raise ValueError(f"style {style!r}: use 'usual' or 'lean'")
        self.torch, self.threads, self.style, self.device = torch, threads, style, torch.device(device)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.steps, self.batch_size = steps, batch_size
        self.images = torch.from_numpy(rng.integers(0, 256, (steps * batch_size, 1, 28, 28), dtype=np.uint8))
        self.labels = torch.from_numpy(rng.integers(0, 2, steps * batch_size).astype(np.float32))
        self.loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.images, self.labels),
                                                  batch_size=batch_size, shuffle=True, drop_last=True)
        self.device_images, self.device_labels = self.images.to(self.device), self.labels.to(self.device)
        self.nets = [make_cnn(torch).to(self.device), make_cnn(torch).to(self.device)]  # learner, expert
        self.opts = [torch.optim.SGD(net.parameters(), lr=lr) for net in self.nets]
        self.loss = torch.nn.BCEWithLogitsLoss()
        self.history = []  # per step: (loss, accuracy) of the learner and of the expert
        self()  # warm-up (allocator, oneDNN primitive caches)

    def batches(self):
        if self.style == "usual":
            yield from self.loader
            return
        B = self.batch_size
        for i in range(self.steps):
            yield self.device_images[i * B : (i + 1) * B], self.device_labels[i * B : (i + 1) * B]

    def __call__(self) -> int:
        torch = self.torch
        torch.set_num_threads(self.threads)
        for images, y in self.batches():
            images, y = images.to(self.device), y.to(self.device)  # no-ops for the lean loop
            x = images.float() / 255.0
            metrics = []
            for net, opt in zip(self.nets, self.opts):
                opt.zero_grad()
                logits = net(x)
                loss = self.loss(logits, y)
                loss.backward()
                opt.step()
                if self.style == "usual":
                    metrics.append((loss.item(), ((logits > 0).float() == y).float().mean().item()))
            if metrics:
                self.history.append(metrics)
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the call's work is done when it returns, as cljax's is
        return self.steps * self.batch_size * 2


def torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


if __name__ == "__main__":
    from cljax.host import usable_cores

    for style in ("usual", "lean"):
        unit = TorchRepeat(steps=50, batch_size=32, threads=usable_cores(), style=style)
        t0 = time.perf_counter()
        n = unit()
        print(f"torch {torch_version()}, {style}: {n / (time.perf_counter() - t0):.0f} samples/s (learner + expert, one repeat)")
