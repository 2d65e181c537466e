"""The flags of ``cljax sweep`` beside those of ``cljax run``, and their checks: each refusal is
one line, made before any folder is written or any job submitted."""

from __future__ import annotations

import argparse
import math

from cljax.config import Config
from cljax.errors import CljaxError
from cljax.flags import bound_text, check_value, field_types
from cljax.sweep_executor import parse_minutes

SUBMITIT_ARRAY_PARALLELISM = 256  # submitit's own default for a SLURM job array


def comma_items(text: str, flag: str, example: str) -> list[str]:
    """"0,1,2" -> ["0", "1", "2"]; an empty item (``1,,2``, ``1,2,``: a value left out by a typo,
    which a sweep would otherwise run without) is one CljaxError line. ``flag`` ending in "=" (a
    grid's "--grid lr=") is joined to the values without a space, as it is typed."""
    items = [item.strip() for item in text.split(",")]
    if "" in items:
        sep = "" if flag.endswith("=") else " "
        raise CljaxError(f"{flag}{sep}{text!r} has an empty item: write the values between single commas, e.g. "
                         f"{flag}{sep}{example}.")
    return items


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """--grid, --seeds, the executor and its SLURM resources; each help ends with its default."""
    seed = _seed_field()
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                        help="a setting and its values (repeatable; the runs are all combinations) (default: none)")
    parser.add_argument("--seeds", default=None, help=f"comma-separated seeds, each in [{seed.metadata['min']},"
                        f"{bound_text(seed.metadata['max'])}] (default: --seed)")
    parser.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto",
                        help="auto: SLURM where srun is on PATH (as submitit decides; it submits with sbatch), else local "
                        "processes (default: auto)")
    parser.add_argument("--wait", action="store_true", help="wait for every job and print its outcome (default: submit "
                        "and return)")
    parser.add_argument("--job-name", default="cljax", help="job name, not empty (default: cljax)")
    parser.add_argument("--log-dir", default=None, help="submitit's logs, in a folder of each sweep's own named by its "
                        "time and process id (default: RESULTS_DIR/sweep_logs)")
    parser.add_argument("--slurm-partition", default=None, help="SLURM partition (default: the cluster's default one)")
    parser.add_argument("--slurm-account", default=None, help="SLURM account (default: your default account)")
    parser.add_argument("--slurm-time", default="600", help="time limit per job in SLURM's formats: minutes, M:SS, "
                        "H:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (default: 600); also the local executor's limit")
    parser.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per node (SLURM's --gpus-per-node): a "
                        "job is one task on one node, so these are its GPUs; the repeats are split over them; at most "
                        "what a node of the partition has (SLURM refuses more) (>0; default: none asked for, the "
                        "partition's default)")
    parser.add_argument("--slurm-cpus", type=int, default=None, help="CPUs per job (SLURM's --cpus-per-task; default: "
                        "the cluster's, often 1): a CPU job splits its repeats over the cores it is given, so give it "
                        "--n-repeats (or a divisor of it) (>0)")
    parser.add_argument("--slurm-mem-gb", type=float, default=None, help="memory per job in GB (>0; default: the "
                        "cluster's)")
    parser.add_argument("--slurm-array-parallelism", type=int, default=None, help="at most this many jobs at once "
                        f"(>0; default: submitit's, {SUBMITIT_ARRAY_PARALLELISM})")


def _seed_field():
    return next(f for f in Config.__dataclass_fields__.values() if f.name == "seed")


def sweep_seeds(text: str | None, base_seed: int, argv: list[str]) -> list[int]:
    """The seeds of ``--seeds`` (``--seed`` alone when it is not given), each checked as ``--seed``
    is; a ``--seed`` typed beside it must be one of them."""
    if text is None:
        return [base_seed]
    if not text.strip():
        raise CljaxError(f"--seeds {text!r} names no seed: write comma-separated integers, e.g. --seeds 0,1,2.")
    try:
        seeds = [int(s) for s in comma_items(text, "--seeds", "0,1,2")]
    except ValueError:
        raise CljaxError(f"--seeds {text!r}: write comma-separated integers, e.g. --seeds 0,1,2.") from None
    field = _seed_field()
    for seed in seeds:
        try:
            check_value("seed", field_types(Config, {"seed"})["seed"], field.metadata, seed)
        except CljaxError:
            raise CljaxError(f"--seeds {text!r}: {seed} is not a seed, which is an integer in [{field.metadata['min']}, "
                             f"{bound_text(field.metadata['max'])}]: write e.g. --seeds 0,1,2.") from None
    if base_seed not in seeds and any(a == "--seed" or a.startswith("--seed=") for a in argv):
        raise CljaxError(f"--seed {base_seed} is not among --seeds {text}, which the sweep runs: list it in "
                         f"--seeds, or leave --seed out.")
    return seeds


def check_sweep_flags(args: argparse.Namespace) -> None:
    """The job name, the time limit and the SLURM resources, each as one line."""
    if not args.job_name.strip():
        raise CljaxError(f"--job-name {args.job_name!r} is empty: give the jobs a name (default: cljax), or leave the "
                         f"flag out.")
    try:
        parse_minutes(args.slurm_time)
    except ValueError:
        raise CljaxError(f"--slurm-time {args.slurm_time!r}: write a positive time of at most a year as SLURM does: "
                         f"minutes (600), M:SS (30:00), H:MM:SS (10:00:00), D-HH (1-02) or D-HH:MM:SS (1-02:00:00).") from None
    for flag in ("slurm_gpus", "slurm_cpus", "slurm_mem_gb", "slurm_array_parallelism"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CljaxError(f"--{flag.replace('_', '-')} must be a positive number, got {value}: leave it out for "
                             f"the cluster's default.")
