"""The PyTorch peers of benchmarks/throughput.py, on CUDA when it is present, else the CPU.

Each is cljax's CNN (``torch_reference.make_cnn``), a learner and an expert stepping on the same
batch, binary cross-entropy, SGD, counted like cljax: steps x batch x repeats x 2 per second.

- ``torch``: the usual loop (``torch_reference.TorchRepeat``): one repeat, a shuffling
  DataLoader, each step's loss and accuracy fetched with ``.item()``; the reference.
- ``torch_lean``: the same loop, batches sliced in order, no metrics.
- ``torch_1thread``: the usual loop with one thread (CPU only).
- ``torch_processes_K``: K processes, each running the usual loop for its own repeat at the
  same time (how several seeds usually share a machine); one call = one epoch in every process.
- ``torch_vmap``: ``torch.func.vmap`` of ``torch.func.grad`` over the stacked parameters of the R
  learners and R experts (``torch.func.stack_module_state``), in-place SGD, a per-repeat
  reshuffle every epoch on the device, loss and accuracy kept on the device and fetched once
  per call. The one peer whose throughput depends on R, as cljax's does.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np

from torch_reference import TorchRepeat, make_cnn


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TorchVmap:
    """R repeats' learners and experts as one vmapped functional model. ``__call__`` trains all
    of them for one epoch of ``steps`` steps and returns the samples processed."""

    def __init__(self, repeats: int, steps: int, batch_size: int, device: str, threads: int, lr: float = 0.05,
                 seed: int = 0):
        import torch
        from torch.func import functional_call, grad, stack_module_state, vmap

        self.torch, self.device, self.threads = torch, torch.device(device), threads
        self.repeats, self.steps, self.batch_size, self.lr = repeats, steps, batch_size, lr
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        n = steps * batch_size
        self.images = torch.from_numpy(rng.integers(0, 256, (repeats, n, 1, 28, 28), dtype=np.uint8)).to(self.device)
        self.labels = torch.from_numpy(rng.integers(0, 2, (repeats, n)).astype(np.float32)).to(self.device)
        template = make_cnn(torch)  # one class for all (stack_module_state needs it), each initialised anew
        nets = [copy.deepcopy(template) for _ in range(2 * repeats)]  # R learners, then R experts
        for net in nets:
            for module in net.modules():
                if module is not net and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        nets = [net.to(self.device) for net in nets]
        params, buffers = stack_module_state(nets)
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = buffers
        base = copy.deepcopy(nets[0]).to("meta")
        bce = torch.nn.functional.binary_cross_entropy_with_logits

        def loss_of(p, b, x, y):
            logits = functional_call(base, (p, b), (x,))
            loss = bce(logits, y)
            return loss, torch.stack([loss.detach(), ((logits > 0).float() == y).float().mean()])

        self.step_of = vmap(grad(loss_of, has_aux=True))
        self.history = []  # per call: (steps, 2R, 2) loss and accuracy of every model
        self()  # warm-up

    def __call__(self) -> int:
        torch, R, B = self.torch, self.repeats, self.batch_size
        torch.set_num_threads(self.threads)  # its own, not what the peer before it in the round left
        n = self.steps * B
        order = torch.argsort(torch.rand(R, n, device=self.device), dim=1).view(R, self.steps, B)  # a reshuffle per repeat
        rows = torch.arange(R, device=self.device)[:, None]
        metrics = []
        for i in range(self.steps):
            idx = order[:, i]
            x = self.images[rows, idx].float() / 255.0  # (R, B, 1, 28, 28)
            y = self.labels[rows, idx]
            grads, m = self.step_of(self.params, self.buffers, torch.cat([x, x]), torch.cat([y, y]))
            torch._foreach_add_(list(self.params.values()), [grads[k] for k in self.params], alpha=-self.lr)
            metrics.append(m)
        self.history.append(torch.stack(metrics).cpu())  # one fetch per call, as cljax fetches once per task
        _sync(torch, self.device)
        return self.steps * B * R * 2


def _process_main(conn, steps: int, batch_size: int, threads: int, device: str, seed: int, path: str) -> None:
    sys.path.insert(0, path)
    set_tf32(os.environ.get("CLJAX_TORCH_TF32") == "1")
    unit = TorchRepeat(steps, batch_size, threads, seed=seed, device=device)
    conn.send("ready")
    while conn.recv() == "run":
        conn.send(unit())


class TorchProcesses:
    """K processes running the usual loop, one repeat each, started together each call."""

    def __init__(self, k: int, steps: int, batch_size: int, device: str, threads: int):
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        here = str(Path(__file__).resolve().parent)
        self.pipes, self.procs = [], []
        for i in range(k):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_main, args=(child, steps, batch_size, threads, device, i, here), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a torch peer process did not start")

    def __call__(self) -> int:
        for pipe in self.pipes:
            pipe.send("run")
        return sum(pipe.recv() for pipe in self.pipes)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send("stop")
            except OSError:
                pass
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


def peer_cores() -> int:
    """The cores the peers share out: those this process may run on (its affinity, a cgroup's
    quota), as cljax's device split counts them (``cljax.host.usable_cores``), not the machine's."""
    from cljax.host import usable_cores

    return max(1, usable_cores())


def default_processes(device: str) -> list[int]:
    """K values of the process peer: 8 processes sharing a GPU; one per usable core on a CPU."""
    return [8] if device == "cuda" else [peer_cores()]


def set_tf32(tf32: bool) -> None:
    """TF32 in torch's CUDA matmuls and cuDNN convolutions, or full float32 (torch's default is
    TF32 in convolutions only), to match cljax's --matmul-precision; in this process and, through
    the environment, in the peer processes it spawns."""
    import torch

    os.environ["CLJAX_TORCH_TF32"] = "1" if tf32 else "0"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def torch_units(repeats: list[int], steps: int, batch_size: int, processes: list[int] | None = None,
                vmap: bool = True, tf32: bool = False) -> dict:
    """name -> (callable, samples per call, description) of every peer; the vmap peer once per R,
    keyed ("torch_vmap", R). ``tf32``: see :func:`set_tf32`."""
    set_tf32(tf32)
    device = torch_device()
    cores = peer_cores()
    threads = cores if device == "cpu" else 1
    units = {"torch": (TorchRepeat(steps, batch_size, threads, device=device), steps * batch_size * 2,
                       {"style": "usual", "threads": threads, "device": device, "repeats_per_call": 1}),
             "torch_lean": (TorchRepeat(steps, batch_size, threads, style="lean", device=device), steps * batch_size * 2,
                            {"style": "lean", "threads": threads, "device": device, "repeats_per_call": 1})}
    if device == "cpu" and cores > 1:
        units["torch_1thread"] = (TorchRepeat(steps, batch_size, 1), steps * batch_size * 2,
                                  {"style": "usual", "threads": 1, "device": device, "repeats_per_call": 1})
    for k in processes if processes is not None else default_processes(device):
        per = max(1, cores // k) if device == "cpu" else 1
        units[f"torch_processes_{k}"] = (TorchProcesses(k, steps, batch_size, device, per), k * steps * batch_size * 2,
                                         {"style": "usual", "threads": per, "device": device, "processes": k,
                                          "repeats_per_call": k})
    if vmap:
        for R in repeats:
            units[("torch_vmap", R)] = (TorchVmap(R, steps, batch_size, device, threads), steps * batch_size * R * 2,
                                        {"style": "vmap", "threads": threads, "device": device, "repeats_per_call": R})
    return units


def close_units(units: dict) -> None:
    for unit in units.values():
        if isinstance(unit, TorchProcesses):
            unit.close()


PEER_LABELS = {"torch": "usual loop", "torch_lean": "lean loop", "torch_1thread": "usual loop, 1 thread",
               "torch_vmap": "torch.func vmap over R"}


def peers_table(report: dict) -> str:
    """Markdown: at each R, cljax's samples/s, then every peer's and cljax's ratio to it."""
    cljax = {r["repeats"]: r for r in report["rows"] if r["impl"] == "cljax"}
    names = list(dict.fromkeys(name for r in cljax.values() for name in r.get("ratio_vs_peer", {})))
    torch_rows = {(r["variant"], r["repeats"]): r for r in report["rows"] if r["impl"] == "torch"}
    label = {n: PEER_LABELS.get(n, n.replace("torch_processes_", "") + " processes of the usual loop") for n in names}
    device = report.get("torch_device") or "?"
    head = ["R", "cljax samples/s"] + [f"torch {label[n]} ({device}): samples/s (cljax / it)" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for R, row in sorted(cljax.items()):
        cells = [str(R), f"{row['samples_per_s']:,.0f}"]
        for n in names:
            peer = torch_rows.get((n, R))
            ratio = row.get("ratio_vs_peer", {}).get(n)
            cells.append(f"{peer['samples_per_s']:,.0f} ({ratio:.2f}x)" if peer and ratio else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
