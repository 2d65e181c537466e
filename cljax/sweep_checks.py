"""What `cljax sweep` checks of its runs against what is on disk before it submits a job: each
run's data and folder, as its `cljax run` would (``check_against_data``), and that no run is
one the results folder's sweep.json already lists under another name (``check_not_trained_twice``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cljax.errors import CljaxError, MissingData
from cljax.sweep_report import advises_overwrite


def check_against_data(runs: list, overwrite: bool = False, repair: bool = False,
                       command_of=None) -> None:
    """What each run's `cljax run` would refuse about its data (the classes its tasks take, the
    images per class) and its folder (a run there with other settings, damage below its
    checkpoint unless ``repair``), checked here before any job is queued: each dataset is loaded
    once. Data this host cannot read (only the compute nodes' paths) is left to the jobs, with
    one warning. A refusal that advises --overwrite says what it means in a sweep (every run
    deleted, the finished ones too) and gives the run's own command (``command_of(run)``)."""
    from cljax.data import load_dataset
    from cljax.data.prepared import data_identity
    from cljax.config import algo_dir_of
    from cljax.run_folder import inspect_run
    from cljax.tasks import TaskData, make_schedule

    loaded: dict = {}
    for run in runs:
        c = run.config
        key = (c.dataset, c.data_dir, repr(c.dataset_params))
        if key not in loaded:
            try:
                loaded[key] = load_dataset(c)
            except MissingData as exc:
                loaded[key] = None
                print(f"warning: on this host, {str(exc).rstrip('.')}; not checked here: each job checks its data.",
                      file=sys.stderr)
            except CljaxError as exc:
                raise CljaxError(f"run {run.tag}: {str(exc).rstrip('.')} (no job was submitted).") from None
        data = loaded[key]
        if data is None:
            continue
        try:
            make_schedule(data.n_classes, c.num_tasks, c.n_repeats, c.seed, c.task_schedule)
            TaskData(data, c)
            inspect_run(algo_dir_of(c), c, data_identity(data), overwrite, hashes=False, repair=repair)  # read only
        except CljaxError as exc:
            why = str(exc).rstrip(".")
            if command_of is not None and advises_overwrite(why):
                why += (f"; but the sweep's --overwrite deletes every run, the finished ones too: to train this one "
                        f"again alone, run `{command_of(run)} --overwrite`, then the sweep again")
            raise CljaxError(f"run {run.tag}: {why} (no job was submitted).") from None


def _settings_key(config_dict: dict) -> str:
    """A run's settings and seed, without its folder, as comparable text."""
    return json.dumps({k: v for k, v in config_dict.items() if k != "results_dir"}, sort_keys=True)


def check_not_trained_twice(runs: list) -> None:
    """A run whose folder is new, with the settings and seed of a run the results folder's
    sweep.json lists under another name (the --grid flags in another order, a setting moved
    between --grid and its own flag), would train that run again, and `cljax compare` would
    count it twice: one CljaxError line, before any job."""
    from cljax.config import algo_dir_of
    from cljax.run_search import listed_runs

    if not runs:
        return
    root = Path(runs[0].config.results_dir).parent
    known: dict[str, Path] = {}
    for listed in listed_runs(root) or ():
        try:
            record = json.loads((listed / "run.json").read_text())
            known.setdefault(_settings_key(record["config"]), listed)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # not written yet, or damaged: its job says
            continue
    for run in runs:
        folder = algo_dir_of(run.config)
        other = known.get(_settings_key(run.config.to_dict()))  # (a tuple dumps as the list run.json holds)
        if other is not None and not folder.exists() and other.resolve() != folder.resolve():
            raise CljaxError(f"run {run.tag} has the settings and seed of {other}, which {root / 'sweep.json'} lists, "
                             f"so it would train that run again under a second name: give --grid as that sweep did "
                             f"(the same settings in it, in the same order), or another --results-dir for a second "
                             f"copy (no job was submitted).")
