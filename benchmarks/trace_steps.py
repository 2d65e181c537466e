"""Train tasks of a run again from one of its kept checkpoints with a snapshot every K steps, and
print, per snapshot, one repeat's training loss (the mean over the K steps before it, as a run
records it) and the largest |weight| of each layer: how a divergence (or anything else between
the run's snapshots) unfolded, step by step.

The program is the run's own (its settings, seed, class pairs and task keys; on a CPU host the
device split it recorded), built with ``--log-frequency K``, which changes what is saved, not
what is trained. ``--with`` trains it under other settings from the same state instead (e.g.
``--with "--cbp-rate 0"``: the same learner without replacements); the learner state must keep its
shape. Nothing is written to the run's folder.

    python benchmarks/trace_steps.py --from-task 104 --to-task 109 --repeat 2 [--every 1] \
        [--with "--cbp-rate 0"] [--json out.json] -- <the run's `cljax run` flags>

``--from-task`` needs the checkpoint kept as that task began (``--keep-checkpoints N``: every
N-th task), or 0 (the initial state). docs/plasticity.md used it to trace CBP's divergence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cljax

from bench_args import output_file, positive_int  # noqa: E402


def _config(flags: list[str]):
    from cljax.cli import _Parser
    from cljax.settings import add_run_flags, add_settings_flags, config_from_args

    parser = _Parser(prog="cljax run")
    add_settings_flags(parser, flags)
    add_run_flags(parser)
    return config_from_args(parser.parse_args(flags))


def trace(run_flags: list[str], first: int, last: int, repeat: int, every: int = 1, other: list[str] = ()) -> dict:
    """{"steps": [...], "task": [...], "train_loss": [...], "max_abs": {layer: [...]}, "last_weights":
    {task: the repeat's weights at the task's last step}} for the repeat, tasks ``first``..``last``;
    each task's rows begin with step 0, its start (no training loss yet: None, null in the JSON)."""
    from cljax.checkpoint import load_learner, read_run_record, recorded_split
    from cljax.config import algo_dir_of
    from cljax.devices.cpu_split import configure_cpu_devices
    from cljax.errors import CljaxError

    config = _config(run_flags).validate()
    algo_dir = algo_dir_of(config)
    record = read_run_record(algo_dir)
    if record is None:
        raise CljaxError(f"{algo_dir} holds no run: pass the flags of the run to trace after `--`.")
    if not (0 <= first <= last < config.num_tasks) or not 0 <= repeat < config.n_repeats:
        raise CljaxError(f"tasks {first}..{last} and repeat {repeat} are not of this run ({config.num_tasks} tasks, "
                         f"{config.n_repeats} repeats).")
    configure_cpu_devices(config.n_repeats, recorded=recorded_split(algo_dir))

    import jax

    from cljax.data import load_dataset
    from cljax.devices.mesh import fetch, shard_repeats
    from cljax.evaluate import WindowTestSets
    from cljax.experiment import task_inputs
    from cljax.kept_checkpoints import kept_path
    from cljax.program import build_task_program
    from cljax.run_split import recorded_pairing
    from cljax.tasks import TaskData, make_schedule

    traced = dataclasses.replace(_config([*run_flags, *other]) if other else config, log_frequency=every).validate()
    data = load_dataset(config)
    schedule = make_schedule(data.n_classes, config.num_tasks, config.n_repeats, config.seed, config.task_schedule)
    task_data = TaskData(data, traced)
    program = build_task_program(traced, data.train_images.shape[1:], paired_models=recorded_pairing(config, record))
    learner = shard_repeats(program.init_learner(jax.random.key(config.seed)))
    if first > 0:
        path = kept_path(algo_dir, first)
        if not path.exists():
            raise CljaxError(f"{path} does not exist: trace from a task whose checkpoint was kept (`--keep-checkpoints "
                             f"N` keeps one every N tasks), or from 0.")
        learner = shard_repeats(load_learner(algo_dir, learner, path, mismatch_fix=(
            "a --with that changes the network or its state (the model, an option's state) cannot start from the "
            "run's checkpoint; trace with other --with flags"))[0])
    tests = WindowTestSets(task_data, schedule, 1)  # the expert's test set, task by task: any --eval-tasks
    out = {"steps": [], "task": [], "train_loss": [], "max_abs": {}, "last_weights": {}}
    for t in range(first, last + 1):
        x, y = task_data.train(schedule[t])
        learner, trace_ = program.run_task(learner, *task_inputs(config.seed, t, (x, y), tests.current(t)))
        trace_ = fetch(trace_)
        # The weights as the task began (after its task-start options), then at each snapshot.
        weights = jax.tree.map(lambda w: np.asarray(w)[:, repeat], trace_["weights"])
        out["steps"] += [0, *traced.log_steps]
        out["task"] += [t] * (1 + len(traced.log_steps))
        out["train_loss"] += [None, *np.asarray(trace_["train_loss"])[:, repeat].tolist()]  # step 0: none yet
        for layer, tree in weights.items():
            biggest = np.max([np.abs(w).reshape(w.shape[0], -1).max(1) for w in jax.tree.leaves(tree)], axis=0)
            out["max_abs"].setdefault(layer, []).extend(biggest.tolist())
        out["last_weights"][t] = jax.tree.map(lambda w: w[-1], weights)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="trace_steps.py", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s --from-task T --to-task T [options] -- RUN FLAGS")
    p.add_argument("--from-task", type=int, required=True)
    p.add_argument("--to-task", type=int, required=True)
    p.add_argument("--repeat", type=int, default=0)
    p.add_argument("--every", type=positive_int, default=1, help="steps between snapshots (the program's --log-frequency)")
    p.add_argument("--with", dest="other", default="", help="flags added to the run's for the trace, in one string")
    p.add_argument("--json", type=output_file, help="write the trace (without weights) here")
    if "--" not in argv:
        if "-h" in argv or "--help" in argv:
            p.parse_args(["--help"])  # prints the usage, exits 0
        print("error: pass the run's `cljax run` flags after `--`.", file=sys.stderr)
        return 2
    cut = argv.index("--")
    args = p.parse_args(argv[:cut])
    from cljax.errors import CljaxError

    try:
        got = trace(argv[cut + 1:], args.from_task, args.to_task, args.repeat, args.every, shlex.split(args.other))
    except CljaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    layers = list(got["max_abs"])
    print("task  step  train_loss  " + "  ".join(f"{name:>9}" for name in layers) + "   (largest |weight|)")
    for i, (t, s) in enumerate(zip(got["task"], got["steps"])):  # + 0.0: a loss of -0.0 (-log 1) prints as 0
        loss = got["train_loss"][i]  # None as a task begins: no step has been taken (nan would read as divergence)
        print(f"{t:4d}  {s:4d}  {'-' if loss is None else f'{loss + 0.0:.4g}':>10}  "
              + "  ".join(f"{got['max_abs'][name][i]:9.3g}" for name in layers))
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in got.items() if k != "last_weights"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
