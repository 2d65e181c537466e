"""The sweep's pieces without a cluster: folder tags one-to-one (and distinct on a
case-insensitive filesystem), the grid's checks, the data checked once per dataset before any job,
what each job and a requeued job are handed, the executor's parameters, SLURM's time formats and
the line of a failed job. The sweep through submitit's local executor: tests/test_scale.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import cljax.sweep as sweep
import cljax.sweep_executor as sweep_executor
import cljax.sweep_report as sweep_report
from cljax.cli import main
from cljax.config import Config
from cljax.errors import CljaxError
from cljax.registry import loaded_plugins

SMALL = dict(dataset="synthetic", synthetic_classes=4, num_tasks=2, n_repeats=1, n_train_per_class=16,
             n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=16, log_frequency=1)


REPO = Path(__file__).resolve().parents[1]


def base_of(tmp_path, **overrides) -> dict:
    return Config.from_flat({**SMALL, "results_dir": str(tmp_path), **overrides}).to_dict()


def test_tags_are_one_to_one_and_folders_differing_in_case_are_refused(tmp_path):
    assert sweep._tag_value(0.1) == "0.1" and sweep._tag_value("/x/a_b") == "_2fx_2fa_5fb"
    # two hex digits always: a tab then "a" is not the character 0x9a
    assert sweep._tag_value("\ta") == "_09a" and sweep._tag_value("\x9a") == "_9a"
    assert sweep._tag_value("\u20ac") == "__0020ac"
    with pytest.raises(CljaxError, match="two runs of the sweep would write the same folder"):
        sweep.expand(base_of(tmp_path), {"data_dir": ["/x/Data", "/x/data"]}, [0])  # one folder on macOS
    runs = sweep.expand(base_of(tmp_path), {"data_dir": ["/x/Data", "/x/data2"]}, [0, 1])
    assert [r.tag for r in runs] == ["data_dir-_2fx_2fData_seed-0", "data_dir-_2fx_2fData_seed-1",
                                     "data_dir-_2fx_2fdata2_seed-0", "data_dir-_2fx_2fdata2_seed-1"]


def test_the_grid_is_checked_as_it_is_read():
    assert sweep.parse_grid(["--n-repeats=2, 4 ", "lr=0.1"]) == {"n_repeats": [2, 4], "lr": [0.1]}
    # An empty item is a value left out by a typo: the sweep would run without it.
    for bad, match in ((["lr=0.1", "lr=0.2"], "--grid lr given twice"), (["results_dir=a"], "its own folder"),
                       (["lr= "], "at least one value"), (["lr=,"], "has an empty item"),
                       (["n_repeats=2, ,4"],
                        r"--grid n_repeats='2, ,4' has an empty item: .* e\.g\. --grid n_repeats=0\.01,0\.05\."),
                       (["n_repeats=2,4,"], "has an empty item")):
        with pytest.raises(CljaxError, match=match):
            sweep.parse_grid(bad)


def test_data_is_checked_once_per_dataset_and_each_run_against_its_own(tmp_path, monkeypatch):
    import cljax.data
    import cljax.run_folder

    loads, inspected = [], []
    real_load = cljax.data.load_dataset
    monkeypatch.setattr(cljax.data, "load_dataset", lambda c: loads.append(c.dataset_params) or real_load(c))
    real_inspect = cljax.run_folder.inspect_run
    monkeypatch.setattr(cljax.run_folder, "inspect_run",
                        lambda *a, **k: inspected.append(a[3]) or real_inspect(*a, **k))
    runs = sweep.expand(base_of(tmp_path, num_tasks=3), {"synthetic_classes": [20, 4]}, [0, 1])
    with pytest.raises(CljaxError, match=r"run synthetic_classes-4_seed-0: --num-tasks 3 needs 6 classes.*"
                                         r"\(no job was submitted\)"):
        sweep.check_against_data(runs)  # the 4-class dataset, not the 20-class one loaded first
    assert [p.classes for p in loads] == [20, 4]  # once per dataset, not per seed
    loads.clear(), inspected.clear()
    sweep.check_against_data(runs[:2], overwrite=True)
    assert len(loads) == 1 and inspected == [True, True]  # --overwrite reaches the folder check


def test_each_job_is_handed_overwrite_and_a_requeued_job_never_overwrites(tmp_path):
    pytest.importorskip("submitit", reason="the sweep extra is not installed: pip install 'cljax[sweep]'")  # the job class
    calls = []
    executor = SimpleNamespace(map_array=lambda fn, *lists: calls.append((fn, lists)) or ["j0", "j1"])
    runs = sweep.expand(base_of(tmp_path), {"lr": [0.1, 0.2]}, [0])
    assert sweep.submit(runs, executor, overwrite=True, allow_nonfinite=False) == ["j0", "j1"]
    (job, (configs, overwrite, nonfinite, repair, plugins, progress)), = calls
    assert configs == [r.config.to_dict() for r in runs]
    assert overwrite == [True, True] and nonfinite == [False, False] and repair == [False, False]
    assert plugins == [tuple(loaded_plugins())] * 2  # each job loads the files the sweep loaded
    assert progress == [True, True]  # lines in the job's log, unless --no-progress
    # Requeued after a time limit: it resumes what the first attempt wrote, even under --overwrite.
    again = job.checkpoint(configs[0], True, True, False, ("p.py",), False)
    told = {"attempts": 1, "first_task": None}  # (it trained no task here: nothing to tell)
    assert again.function is job and again.args == (configs[0], False, True, False, ("p.py",), False, told)
    calls.clear()
    sweep.submit(runs, executor, allow_nonfinite=True, repair=True, progress=False)
    (job, (_, overwrite, nonfinite, repair, _, progress)), = calls
    assert progress == [False, False]
    assert overwrite == [False, False] and nonfinite == [True, True] and repair == [True, True]
    assert job.checkpoint(configs[0], False, False, True).args == (configs[0], False, False, True, (), True, told)  # repairs again


def test_a_job_loads_the_plugin_files_of_its_sweep(tmp_path):
    # `cljax sweep --plugin FILE` checked its runs and submitted them, and every job then failed
    # with "unknown setting(s)": a job is another process, and only $CLJAX_PLUGINS reached it.
    plugin = REPO / "tests" / "plugins" / "toy_extension.py"
    config = {**base_of(tmp_path), "algorithm": "ToySign", "toysign_scale": 0.5, "model": "toy_linear"}
    script = ("import sys, json\nfrom cljax.sweep import run_job\n"
              "out = run_job(json.loads(sys.argv[1]), plugins=(sys.argv[2],))\nprint(out['tasks'], out['algo_dir'])\n")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(config), str(plugin)], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "CLJAX_CPU_DEVICES": "off"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "2" and (Path(proc.stdout.split()[1]) / "task_001" / "metrics.pkl").is_file()


def test_the_executor_gets_only_the_cluster_settings_given(tmp_path, monkeypatch, capsys):
    submitit = pytest.importorskip("submitit", reason="the sweep extra is not installed: pip install 'cljax[sweep]'")

    made = []

    class FakeExecutor:
        def __init__(self, folder, cluster):
            made.append({"folder": folder, "cluster": cluster})
            self.cluster = cluster or "slurm"

        def update_parameters(self, **params):
            made[-1]["params"] = params

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    args = SimpleNamespace(job_name="j", slurm_time="1:30:00", slurm_gpus=2, slurm_cpus=None, slurm_mem_gb=None,
                           slurm_partition="gpu", slurm_account=None, slurm_array_parallelism=None)
    sweep.make_executor("auto", tmp_path, args)
    assert capsys.readouterr().err == ""
    sweep.make_executor("local", tmp_path, args)  # the local executor drops them: said, not silent
    assert capsys.readouterr().err == ("warning: --slurm-gpus, --slurm-partition have no effect with the local executor: "
                                       "every job starts at once, on this machine.\n")
    assert [m["cluster"] for m in made] == [None, "local"]
    assert made[0]["params"] == {"name": "j", "timeout_min": 90, "gpus_per_node": 2, "slurm_partition": "gpu"}


def test_slurm_times_and_settings_that_cannot_be_are_refused(tmp_path, capsys):
    assert [sweep_executor.parse_minutes(t) for t in ("0:00:01", "1-00", " 45 ")] == [1, 1440, 45]
    for bad in ("1:-30", "1-2:-5", "-1:30", "1:2:"):
        with pytest.raises(ValueError):
            sweep_executor.parse_minutes(bad)
    flags = ["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path / "s"), "--executor", "local"]
    for flag, value in (("--slurm-gpus", "0"), ("--slurm-array-parallelism", "0"), ("--slurm-mem-gb", "inf")):
        assert main([*flags, flag, value]) == 2
        assert f"{flag} must be a positive number, got {float(value) if 'mem' in flag else value}" in \
            capsys.readouterr().err
    assert main([*flags, "--slurm-time", "1:-30"]) == 2 and "--slurm-time '1:-30'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_seed_that_seeds_leave_out_is_refused_not_dropped(tmp_path, capsys):
    flags = ["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path / "s"), "--executor", "local"]
    assert main([*flags, "--seed", "3", "--seeds", "0,1"]) == 2
    assert capsys.readouterr().err == ("error: --seed 3 is not among --seeds 0,1, which the sweep runs: list it in "
                                       "--seeds, or leave --seed out.\n")
    assert main([*flags, "--seed=3", "--seeds", "0,1"]) == 2 and "--seed 3 is not among" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_srun_without_sbatch_is_refused_as_such_and_a_refused_sweep_leaves_no_log_folder(tmp_path, capsys,
                                                                                          monkeypatch):
    # submitit's auto picks SLURM where srun is; with no sbatch the line was "No such file or
    # directory (sbatch): check the path and its permissions", and RESULTS_DIR/sweep_logs stayed.
    pytest.importorskip("submitit", reason="the sweep extra is not installed: pip install 'cljax[sweep]'")
    import shutil

    real_which = shutil.which  # this host's SLURM, whatever it has: srun without sbatch (both ask shutil.which)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: {"srun": "/fake/srun", "sbatch": None}.get(
        name, real_which(name, *a, **k)))
    flags = ["sweep", "--dataset", "synthetic", "--num-tasks", "2", "--results-dir", str(tmp_path / "s")]
    assert main(flags) == 2
    assert capsys.readouterr().err == (
        "error: sbatch, SLURM's submit command, was not found on PATH (the SLURM executor needs it; --executor auto "
        "chooses SLURM where srun is): load SLURM (e.g. `module load slurm`), or pass --executor local (no job was "
        "submitted).\n")
    assert not (tmp_path / "s").exists()

    def fails(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sweep, "submit", fails)  # a submission that fails before any job
    assert main([*flags, "--executor", "local"]) == 2 and "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_each_sweep_keeps_its_logs_in_a_folder_of_its_own(tmp_path, monkeypatch, capsys):
    # A local job's id is a process id: a later sweep's job that got the same id overwrote the
    # earlier job's ID_submitted.pkl and ID_0_result.pkl, which sweep.json's "earlier" points to.
    pytest.importorskip("submitit", reason="the sweep extra is not installed: pip install 'cljax[sweep]'")
    made = []

    def submit(runs, executor, *args):
        made.append(Path(executor.folder))
        (Path(executor.folder) / "4242_submitted.pkl").write_text("")
        return [SimpleNamespace(job_id="4242")]

    monkeypatch.setattr(sweep, "submit", submit)
    flags = ["sweep", "--dataset", "synthetic", "--num-tasks", "2", "--results-dir", str(tmp_path), "--executor", "local"]
    assert main(flags) == 0 and main(flags) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert [Path(manifest["earlier"][0]["logs"]), Path(manifest["logs"])] == made
    assert made[0] != made[1] and all(m.parent == tmp_path / "sweep_logs" for m in made)
    assert all((m / "4242_submitted.pkl").is_file() for m in made)


def test_the_help_says_what_auto_and_the_slurm_resources_are(capsys):
    # It said auto picks SLURM "when sbatch is available" (submitit looks for srun) and
    # --slurm-gpus "GPUs per job" (it is gpus_per_node).
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "auto: SLURM where srun is on PATH" in text and "GPUs per node (SLURM's --gpus-per-node)" in text
    assert "CPUs per job (SLURM's --cpus-per-task; default: the cluster's, often 1)" in text


def test_analyze_given_a_sweeps_folder_names_the_runs_its_sweep_json_lists(tmp_path, capsys):
    # It said "has no task folders: ... run the experiment first": the runs are three levels down.
    # (compare takes the folder as its runs: tests/test_scale.py.)
    from cljax.run_search import runs_near

    folders = [tmp_path / f"lr-0.{i}_seed-0" / "synthetic" / "SL_T2" for i in range(6)]
    for folder in folders:
        (folder / "task_000").mkdir(parents=True)
    listed = [{"tag": f.parents[1].name, "results": str(f)} for f in folders]
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": listed[:2], "earlier": []}))
    assert main(["analyze", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path} holds no finished task folder (task_000, ...): it holds a sweep (sweep.json lists 2 "
                                       f"run(s) with task folders): pass its runs' folders, {folders[0]} {folders[1]}.\n")
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": listed, "earlier": []}))
    assert runs_near(tmp_path).endswith(f"{folders[3]} ... (6 in all: {tmp_path}/*seed-*/*/*)")
    # an earlier sweep into the folder lists its runs too (only the latest one's were named)
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": listed[2:3], "earlier": [{"runs": listed[:2]}]}))
    assert runs_near(tmp_path).endswith(f"lists 3 run(s) with task folders): pass its runs' folders, {folders[0]} "
                                        f"{folders[1]} {folders[2]}")
    (tmp_path / "sweep.json").write_text('{"runs": [')  # damaged: it said "no task folders ... run the experiment"
    assert runs_near(tmp_path) == (f"its sweep.json cannot be read as a sweep's record: pass its runs' folders, "
                                   f"{tmp_path}/*seed-*/*/*")
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": listed[2:3], "earlier": [{"runs": listed[:2]}]}))
    # A copy of the sweep's folder names its own runs (the recorded absolute paths named the original's).
    import shutil

    from cljax.run_search import sweep_runs

    shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-copy")
    copied = tmp_path.parent / f"{tmp_path.name}-copy"
    assert sweep_runs(copied) == [str(copied / f.relative_to(tmp_path)) for f in folders[:3]]


def test_compare_given_a_sweeps_folder_names_the_runs_below_it_that_sweep_json_does_not_list(tmp_path, capsys):
    # A run written into the sweep's folder by hand (cljax run --results-dir SWEEP) was left out without a word.
    from cljax.run_search import with_sweeps_runs

    listed = tmp_path / "lr-0.1_seed-0" / "synthetic" / "SL_T2"
    extra = [tmp_path / "synthetic" / "SL_T2", tmp_path / "mine_seed-9" / "synthetic" / "RL_T2"]
    for folder in (listed, *extra):
        (folder / "task_000").mkdir(parents=True)
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": [{"tag": "lr-0.1_seed-0", "results": str(listed)}]}))
    assert with_sweeps_runs([str(tmp_path)]) == [str(listed)]
    assert capsys.readouterr().err == (f"note: {tmp_path} holds a sweep: comparing the 1 run(s) with task folders its "
                                       f"sweep.json lists; 2 other run(s) below it are not in sweep.json and are left out "
                                       f"(pass them too to compare them): {extra[0]} {extra[1]}.\n")
    # a run's folder given as it is, with no note
    assert with_sweeps_runs([str(extra[0])]) == [str(extra[0])] and capsys.readouterr().err == ""
    # A sweep just submitted: no listed run has a task yet. Its sweep.json was called unreadable.
    from cljax.run_search import runs_near

    (listed / "task_000").rmdir()
    assert runs_near(tmp_path) == (f"it holds a sweep whose 1 run(s) have no finished task yet (sweep.json lists them): "
                                   f"wait for its jobs, or pass a run's folder; below it, not in sweep.json: {extra[0]} "
                                   f"{extra[1]}")


def test_the_sweep_record_holds_absolute_paths_and_a_job_told_to_rerun_without_overwrite_gets_no_overwrite_note(
        tmp_path, monkeypatch, capsys):
    # A relative --results-dir was recorded as given, and compare read it from its own working
    # directory; "(without --overwrite)" in a killed job's line brought the note that advises it.
    from cljax.sweep_report import report_outcomes

    monkeypatch.chdir(tmp_path)
    runs = sweep.expand(base_of(Path("rel")), {"lr": [0.1]}, [0])
    sweep.write_manifest(Path("rel") / "sweep.json", runs, [SimpleNamespace(job_id="7")], "local", Path("rel") / "logs")
    record = json.loads((tmp_path / "rel" / "sweep.json").read_text())
    assert record["logs"] == str(tmp_path / "rel" / "logs") and Path(record["runs"][0]["results"]).is_absolute()
    killed = SimpleNamespace(job_id="7", paths=SimpleNamespace(stderr="e"), exception=lambda: RuntimeError(
        "Job (task=0) failed during processing with trace:\n----------------------\nKeyboardInterrupt\n"))
    monkeypatch.setattr("cljax.sweep_report.job_error_line", lambda error: "the job's process was interrupted "
                        "(SIGINT): run the same sweep again (without --overwrite) to resume its run")
    assert report_outcomes(runs, [killed], command_of=lambda run: "cljax run ...") == 1
    assert "note: --overwrite" not in capsys.readouterr().out


def test_repeats_a_job_could_not_split_over_its_devices_are_refused_before_any_job(tmp_path, capsys, monkeypatch):
    # The job refused at run time, after the sweep had queued it beside the others.
    flags = ["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path / "s"), "--grid", "n_repeats=4,3"]
    monkeypatch.setenv("CLJAX_CPU_DEVICES", "2")
    assert main([*flags, "--executor", "local"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: run n_repeats-3_seed-0: CLJAX_CPU_DEVICES=2 does not divide --n-repeats 3: use a divisor of it, auto, "
        "or off (no job was submitted).")
    monkeypatch.delenv("CLJAX_CPU_DEVICES")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")  # read from the job's environment
    assert main([*flags, "--executor", "local"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: run n_repeats-3_seed-0: --n-repeats 3 does not split over the 4 CPU devices XLA_FLAGS makes here: use "
        "a multiple of 4 (no job was submitted).")
    # A SLURM job without GPUs runs on its node's CPU, in this environment (sbatch passes it on).
    assert main([*flags, "--executor", "slurm"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: run n_repeats-3_seed-0: --n-repeats 3 does not split over the 4 CPU devices XLA_FLAGS makes in each "
        "job (its environment is this one's): use a multiple of 4 (no job was submitted).")
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setenv("CLJAX_CPU_DEVICES", "2")
    assert main([*flags, "--executor", "slurm"]) == 2
    assert "run n_repeats-3_seed-0: CLJAX_CPU_DEVICES=2 does not divide --n-repeats 3" in capsys.readouterr().err
    monkeypatch.delenv("CLJAX_CPU_DEVICES")
    assert main([*flags, "--executor", "slurm", "--slurm-gpus", "2"]) == 2
    assert "run n_repeats-3_seed-0: --n-repeats 3 does not split over a job's 2 GPUs (--slurm-gpus)" in \
        capsys.readouterr().err
    import shutil

    real = shutil.which  # auto: SLURM where srun is, as submitit's AutoExecutor decides
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: "/usr/bin/srun" if name == "srun" else real(name, *a, **kw))
    assert main([*flags, "--slurm-gpus", "2"]) == 2 and "a job's 2 GPUs" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_failed_job_is_named_by_the_error_it_raised_last():
    chained = RuntimeError("Traceback:\ncljax.errors.CljaxError: first, while handling\n\nDuring handling of the "
                           "above exception, another exception occurred:\n\ncljax.errors.CljaxError: the one raised\n"
                           "You can check full logs at paths:\n  - /logs/1_0_log.err")
    assert sweep_report.job_error_line(chained) == "the one raised"
    assert sweep_report.job_error_line(RuntimeError("")) == "RuntimeError('')"
    # submitit's error for a job it stopped requeueing: its last line was a log path
    timed_out = RuntimeError("Job 7722 (task: 0) with path /logs/7722_0_result.pkl\nhas failed with:\n"
                             "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many "
                             "times.\nYou can check full logs at paths:\n  - /logs/7722_0_log.out")
    assert sweep_report.job_error_line(timed_out) == (
        "the job was stopped at its time limit and not requeued (timed-out too many times): raise --slurm-time, or run "
        "the same sweep again (without --overwrite) to resume its run from its last finished task")


def test_a_job_that_raised_or_was_killed_is_named_by_what_happened_not_a_log_path():
    # A job's ValueError (a plugin's, XLA's out of memory, a bug) was reported by its last line,
    # "- /logs/18686_0_log.out"; a job killed under its controller as "ended without a result
    # (state: FINISHED)". submitit's texts as its local executor wrote them:
    paths = "You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /l/1_0_log.err\n  - /l/1_0_log.out"
    frames = ('Traceback (most recent call last):\n  File "/s/submission.py", line 55, in process_job\n'
              '    result = delayed.result()\n             ^^^^^^^^^^^^^^^^\n  File "/p.py", line 5, in f\n')
    failed = RuntimeError(f"Job (task=0) failed during processing with trace:\n----------------------\n{frames}"
                          f"ValueError: bad value\nsecond line\n\n----------------------\n{paths}")
    assert sweep_report.job_error_line(failed) == "the job raised ValueError: bad value (its traceback is in the log)"
    no_output = "Job 7 (task: 0) with path /l/7_0_result.pkl\nhas not produced any output (state: {})\n"
    interrupted = RuntimeError(no_output.format("FINISHED") + f"Error stream produced:\n-----\n{frames}KeyboardInterrupt\n")
    assert sweep_report.job_error_line(interrupted) == (
        "the job's process was interrupted (SIGINT): run the same sweep again (without --overwrite) to resume its run "
        "from its last finished task")
    killed = RuntimeError(no_output.format("FINISHED") + "No error stream produced. Look at stdout: /l/7_0_log.out\n"
                          "-----\nsubmitit INFO (2026) - Loading pickle: /l/7_submitted.pkl\npid 27962\n")
    said = sweep_report.job_error_line(killed)
    assert said.startswith("the job's process ended without a result: killed (a signal such as SIGKILL, or out of "
                           "memory; submitit records no signal or exit code): run the same sweep again") and "FINISHED" \
        not in said
    assert "; state: OUT_OF_MEMORY: run the same sweep" in sweep_report.job_error_line(
        RuntimeError(no_output.format("OUT_OF_MEMORY")))  # SLURM's state says more than submitit's local one


def test_a_job_whose_plugin_raised_fails_with_the_line_cljax_run_prints(tmp_path):
    # A plugin's exception in a job was its traceback; `cljax run` prints one line naming the
    # file and its line. The job now raises that line as a CljaxError, which the sweep prints.
    plugin = tmp_path / "raising.py"
    plugin.write_text("from cljax.options import Option\nfrom cljax.registry import register_option\n\n\n"
                      "def boom(*args):\n    raise ValueError('my hook exploded')\n\n\n"
                      "@register_option('raising_hook', tag='rh', flag='use-rh')\n"
                      "def build(params, config, net):\n    return Option(step_end=boom)\n")
    script = ("import sys, json\nfrom cljax.registry import load_plugins\nload_plugins([sys.argv[2]])\n"
              "from cljax.sweep import run_job\nfrom cljax.config import Config\n"
              "flat = {**json.loads(sys.argv[1]), 'use_rh': True}\n"
              "try:\n    run_job(Config.from_flat(flat).to_dict(), plugins=(sys.argv[2],))\n"
              "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(base_of(tmp_path)), str(plugin)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "CLJAX_CPU_DEVICES": "off"})
    assert proc.stdout.startswith(f"CljaxError plugin file {plugin} raised ValueError at line 6 (my hook exploded): "
                                  f"fix it"), proc.stdout + proc.stderr


def test_a_repaired_job_says_what_it_trained_again_not_an_accuracy_it_has_not(tmp_path):
    # After --repair below the checkpoint the line read "last task acc n/a".
    line = sweep_report.done_line
    assert line({"tasks": 5, "first_task": 5, "already_finished": False, "trained_tasks": [1, 2],
                 "final_acc_current": None, "algo_dir": "/r"}) == "5 tasks (repaired tasks 1-2; it had trained every task) -> /r"
    assert line({"tasks": 5, "first_task": 3, "already_finished": False, "trained_tasks": [1, 3, 4],
                 "final_acc_current": 0.5, "algo_dir": "/r"}) == "5 tasks (repaired tasks 1; resumed from task 3), last task acc 0.500 -> /r"
    assert line({"tasks": 2, "first_task": 2, "already_finished": True, "trained_tasks": [],
                 "final_acc_current": 0.25, "algo_dir": "/r"}) == "2 tasks (already finished), last task acc 0.250 -> /r"
    assert line({"tasks": 2, "first_task": 0, "already_finished": False, "trained_tasks": [0, 1],
                 "final_acc_current": 0.25, "algo_dir": "/r"}) == "2 tasks, last task acc 0.250 -> /r"


def test_a_job_whose_run_diverged_under_allow_nonfinite_says_so(tmp_path):
    # It read "done ... 2 tasks, last task acc nan": finished, as any other.
    run = sweep.expand(base_of(tmp_path, lr=1e30), {}, [0])[0]
    out = sweep.run_job(run.config.to_dict(), allow_nonfinite=True, progress=False)
    assert out["nonfinite_tasks"] == 2
    assert sweep_report.done_line(out) == (f"2 tasks, last task acc nan; non-finite values in 2 task(s) (a diverged "
                                           f"network: the means leave its repeats out) -> {out['algo_dir']}")


def test_a_requeued_job_is_described_from_its_first_attempt():
    """Its last attempt resumed what the earlier ones trained: the line read "resumed from task 37"
    for a job that trained every task of a new run in two attempts."""
    def line(first, job_first, attempts, **more):
        return sweep_report.done_line({"tasks": 50, "first_task": first, "trained_tasks": list(range(first, 50)),
                                       "final_acc_current": 0.5, "algo_dir": "/r", "attempts": attempts,
                                       "job_first_task": job_first, **more})

    assert line(37, 0, 2) == "50 tasks (2 attempts: requeued 1 time), last task acc 0.500 -> /r"
    assert line(37, 10, 3) == "50 tasks (resumed from task 10; 3 attempts: requeued 2 times), last task acc 0.500 -> /r"
    assert line(50, 0, 2, already_finished=True) == "50 tasks (2 attempts: requeued 1 time), last task acc 0.500 -> /r"
    # the attempts before the last trained no task: it started where they would have
    assert line(37, 37, 2) == "50 tasks (resumed from task 37; 2 attempts: requeued 1 time), last task acc 0.500 -> /r"
    assert line(37, 37, 1) == "50 tasks (resumed from task 37), last task acc 0.500 -> /r"


def test_a_failed_jobs_overwrite_advice_is_followed_by_what_it_means_in_a_sweep(tmp_path, capsys):
    # "pass --overwrite to start again": a sweep's --overwrite deletes every run.
    from cljax.settings import Parser, add_run_flags, add_settings_flags, config_from_args

    runs = sweep.expand(base_of(tmp_path), {"lr": [0.1, 0.2], "use_l2_init": [True]}, [0])
    advice = ("cljax.errors.CljaxError: /r/run.json is not readable JSON: restore run.json from a copy, or pass "
              "--overwrite to start again (it deletes 1 task folder).")
    paths = SimpleNamespace(stderr="/l/1_0_log.err")
    jobs = [SimpleNamespace(job_id="1", paths=paths, exception=lambda: RuntimeError(advice)),
            SimpleNamespace(job_id="2", paths=paths, exception=lambda: None,
                            result=lambda: {"tasks": 2, "first_task": 0, "trained_tasks": [0, 1], "algo_dir": "/r",
                                            "final_acc_current": 0.5})]
    base = base_of(tmp_path)
    commands = {r.tag: sweep.run_command({**sweep.run_settings(base, r), "results_dir": r.config.results_dir},
                                         ["/p/x.py"]) for r in runs}
    assert sweep_report.report_outcomes(runs, jobs, lambda r: commands[r.tag]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["note: --overwrite in `cljax sweep` applies to every job and would delete the finished runs "
                        "too; to train one run again alone, run its own command (or remove its folder and rerun the "
                        "sweep):", f"    {commands[runs[0].tag]} --overwrite"]
    words = commands[runs[0].tag].split()
    assert words[:4] == ["cljax", "run", "--plugin", "/p/x.py"] and "--use-l2-init" in words
    parser = Parser(prog="cljax run")
    add_settings_flags(parser)
    add_run_flags(parser)
    assert config_from_args(parser.parse_args(words[2:])) == runs[0].config  # the run's own settings and folder
    # The sweep's --overwrite: a rerun without it does not resume a run whose job was refused (it
    # said so for every failed run), only one whose job was stopped.
    assert sweep_report.report_outcomes(runs, jobs, lambda r: commands[r.tag], overwrite=True) == 1
    out = capsys.readouterr().out
    assert "resume" not in out and out.splitlines()[-1] == f"    {commands[runs[0].tag]} --overwrite"
    no_output = "Job 7 (task: 0) with path /l/7_0_result.pkl\nhas not produced any output (state: FINISHED)\n"
    killed = SimpleNamespace(job_id="1", paths=paths, exception=lambda: RuntimeError(no_output))
    assert sweep_report.report_outcomes(runs, [killed, jobs[1]], lambda r: commands[r.tag], overwrite=True) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "note: this sweep ran with --overwrite: run it again without --overwrite to resume the 1 stopped run(s) (with "
        "it, every run is deleted and trained again, the finished ones too).")


def test_a_run_that_diverged_is_not_offered_its_own_command_with_overwrite_which_diverges_again(tmp_path, capsys):
    # Its line says "train it again with a lower --lr and --overwrite": the sweep offered the run's
    # own command (its grid --lr) with --overwrite, which trains the same divergence again; and a
    # lower --lr in that command is another run in the folder named by the grid's value.
    runs = sweep.expand(base_of(tmp_path), {"lr": [1e9, 0.1]}, [0])
    with pytest.raises(CljaxError) as diverged:
        sweep.run_job(runs[0].config.to_dict(), progress=False)
    paths = SimpleNamespace(stderr="/l/1_0_log.err")
    jobs = [SimpleNamespace(job_id="1", paths=paths, exception=lambda: RuntimeError(
                f"Traceback ...\ncljax.errors.CljaxError: {diverged.value}")),
            SimpleNamespace(job_id="2", paths=paths, exception=lambda: None,
                            result=lambda: {"tasks": 2, "first_task": 0, "trained_tasks": [0, 1], "algo_dir": "/r",
                                            "final_acc_current": 0.5})]
    command = sweep.run_command({**sweep.run_settings(base_of(tmp_path), runs[0]),
                                 "results_dir": runs[0].config.results_dir})
    for overwrite in (False, True):
        assert sweep_report.report_outcomes(runs, jobs, lambda r: command, overwrite=overwrite) == 1
        out = capsys.readouterr().out
        assert f"{command} --overwrite" not in out, out
        assert out.splitlines()[-1] == f"    {command} --allow-nonfinite"
        assert "diverges again with the same settings and seed" in out


def test_a_refusal_before_the_jobs_that_advises_overwrite_gives_the_runs_own_command(tmp_path):
    # "pass --overwrite to train the run again from task 0": the sweep's --overwrite deletes every
    # run of the grid, the finished ones too.
    runs = sweep.expand(base_of(tmp_path), {"lr": [0.1, 0.2]}, [0])
    for run in runs:  # both trained; then one loses a task folder
        sweep.run_job(run.config.to_dict(), progress=False)
    shutil.rmtree(next(Path(runs[1].config.results_dir).rglob("task_000")))
    with pytest.raises(CljaxError) as refused:
        sweep.check_against_data(runs, command_of=lambda run: f"cljax run --lr {run.settings['lr']}")
    said = str(refused.value)
    assert said.startswith(f"run {runs[1].tag}: ") and "pass --overwrite" in said
    assert said.endswith("; but the sweep's --overwrite deletes every run, the finished ones too: to train this one "
                         "again alone, run `cljax run --lr 0.2 --overwrite`, then the sweep again (no job was submitted).")


@pytest.mark.parametrize("kind, said", [
    ("local", "local jobs the signal also reached (a Ctrl-C reaches them all) stop, and the same command resumes their "
              "runs from their last finished task; any still running go on (/r/sweep.json lists them): `kill -INT "
              "4101 4102` (their process ids) cancels them (a job ignores SIGTERM)."),
    ("slurm", "the 2 job(s) go on (/r/sweep.json lists them); cancel them with `scancel 77_0 77_1`, or let them end "
              "and run the same command to see each run's outcome (a finished run is not trained again).")])
def test_a_signal_while_waiting_says_what_the_jobs_do_and_how_to_cancel_them(tmp_path, kind, said):
    # A sweep's jobs can outlive the waiting command (SLURM's always; local ones a signal to the
    # sweep alone did not reach): the line said "nothing was left half-written; run the same
    # command again", and a rerun then submitted every job again beside the running ones.
    import signal
    import subprocess
    import sys

    ids = ["4101", "4102"] if kind == "local" else ["77_0", "77_1"]
    code = ("import os, signal, types\nfrom pathlib import Path\n"
            "from cljax.sweep_executor import stop_waiting_says_the_jobs_go_on\n"
            f"jobs = [types.SimpleNamespace(job_id=i) for i in {ids!r}]\n"
            f"stop_waiting_says_the_jobs_go_on(jobs, {kind!r}, Path('/r/sweep.json'))\n"
            "os.kill(os.getpid(), signal.SIGINT)\nimport time; time.sleep(30)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 75 and done.stdout == ""
    assert done.stderr == f"\nstopped waiting by {signal.Signals.SIGINT.name}: {said}\n"


def test_a_sweep_started_ignoring_sigint_does_not_offer_kill_int_to_cancel_its_local_jobs():
    # A script's background job starts ignoring SIGINT, and its local jobs inherit that: the line
    # said that a Ctrl-C reaches them and that `kill -INT ID` cancels them, and the jobs trained on.
    code = ("import os, signal, types\nfrom pathlib import Path\n"
            "from cljax.sweep_executor import stop_waiting_says_the_jobs_go_on\n"
            "jobs = [types.SimpleNamespace(job_id=i) for i in ('4101', '4102')]\n"
            "stop_waiting_says_the_jobs_go_on(jobs, 'local', Path('/r/sweep.json'))\n"
            "os.kill(os.getpid(), signal.SIGTERM)\nimport time; time.sleep(30)\n")
    ignoring = ("import os, signal, sys\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # kept through the exec
                "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])\n")
    done = subprocess.run([sys.executable, "-c", ignoring, code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 75, done.stderr
    said = done.stderr.strip()
    assert "cancels them (a job ignores SIGTERM)" not in said and "a Ctrl-C reaches them" not in said, said
    assert said.startswith("stopped waiting by SIGTERM: the 2 local job(s) go on (/r/sweep.json lists them): this "
                           "command was started ignoring SIGINT") and "`pkill -KILL -P 4101,4102`" in said, said


def test_local_job_controllers_write_to_the_log_folder_not_the_command_output(tmp_path):
    # submitit's controllers inherit the submitting process's stdout and stderr and outlive it:
    # `cljax sweep | tail` waited for the jobs to end, and a Ctrl-C printed their tracebacks. The
    # command's own lines (a warning, a signal's line) still reach its output. The real local
    # executor's jobs: tests/test_scale.py.
    script = (
        "import os, signal, subprocess, sys, types\n"
        "from pathlib import Path\n"
        "from cljax.sweep_executor import controllers_write_to_log\n"
        "print('before', flush=True)\n"
        "with controllers_write_to_log(types.SimpleNamespace(cluster='local'), Path(sys.argv[1])):\n"
        "    subprocess.Popen([sys.executable, '-c', 'import sys, time; print(\"controller\", flush=True); "
        "print(\"err\", file=sys.stderr, flush=True); time.sleep(5)'])\n"
        "    print('inside')\n"
        "    if sys.argv[2] == 'signal':  # as cli's handler: one line, then os._exit\n"
        "        signal.signal(signal.SIGINT, lambda *a: (print('stopped', file=sys.stderr, flush=True), os._exit(75)))\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "print('after', flush=True)\n")
    for how, code, out_words, err_words in (("plain", 0, ["before", "inside", "after"], []),
                                            ("signal", 75, ["before", "inside"], ["stopped"])):
        logs = tmp_path / how
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-c", script, str(logs), how], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO)
        out, err = proc.communicate(timeout=60)  # returns when the command ends, not its child
        assert time.time() - start < 15 and proc.returncode == code, err
        assert out.split() == out_words and err.split() == err_words, (out, err)
        log = logs / "local_controllers.log"
        deadline = time.time() + 15
        while sorted(log.read_text().split()) != ["controller", "err"] and time.time() < deadline:
            time.sleep(0.1)
        assert sorted(log.read_text().split()) == ["controller", "err"]
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "local_controllers.log").mkdir()  # not a file: cannot be opened for writing
    with pytest.raises(CljaxError, match=r"cannot write .*local_controllers.log \(Is a directory\): pass --log-dir"):
        with sweep.controllers_write_to_log(SimpleNamespace(cluster="local"), tmp_path / "ro"):
            pass


def test_a_submission_sbatch_refuses_is_one_line_with_its_reason(tmp_path, capsys, monkeypatch):
    # It was submitit's FailedJobError: 45 lines of traceback, exit 1.
    pytest.importorskip("submitit", reason="the sweep extra is not installed: pip install 'cljax[sweep]'")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):
        (bin_dir / name).write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Requested node "
                                    "configuration is not available' >&2\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    flags = ["sweep", "--dataset", "synthetic", "--num-tasks", "2", "--results-dir", str(tmp_path / "s"),
             "--executor", "slurm", "--slurm-gpus", "2", "--n-repeats", "2"]
    assert main(flags) == 2
    assert capsys.readouterr().err == (
        "error: slurm refused the sweep's jobs (sbatch: error: Batch job submission failed: Requested node "
        "configuration is not available; exit status 1): check --slurm-partition, --slurm-account, --slurm-time, "
        "--slurm-gpus (at most one node's), --slurm-cpus and --slurm-mem-gb against the cluster (sinfo) (no job was "
        "submitted).\n")
    assert not (tmp_path / "s").exists()
    # sbatch's reason on stdout was "no reason given"; an answer without a job id was a traceback
    for script, said in (("echo 'sbatch: error: Invalid account'; exit 1", "refused the sweep's jobs (sbatch: error: "
                          "Invalid account; exit status 1): check --slurm-partition"),
                         ("echo 'queued OK'", "answered the sweep's submission with no job id cljax could read (")):
        (bin_dir / "sbatch").write_text(f"#!/bin/sh\n{script}\n")
        assert main(flags) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: slurm ") and said in err, err


# `cljax sweep` whose submission is stopped by SIGTERM: the executor's jobs are two names.
_STOPPED_SUBMISSION = """
import os, signal, sys, time, types
import cljax.sweep as sweep
from cljax import command

def submit(runs, *args):
    os.kill(os.getpid(), signal.SIGTERM)  # as the jobs are queued
    if os.environ.get("HANGS"):  # a submission that hangs: a second signal
        print("hangs", file=sys.stderr, flush=True)  # (into the output the submission is redirected to)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(60)
    return [types.SimpleNamespace(job_id=f"90{i}") for i in range(len(runs))]

sweep.submit = submit
sweep.make_executor = lambda *args: types.SimpleNamespace(cluster="slurm")
sweep.check_slurm_submits = lambda executor: None
sys.argv = ["cljax", "sweep", *sys.argv[1:]]
sys.exit(command.main())
"""


def test_a_stop_while_the_jobs_are_submitted_waits_until_sweep_json_lists_them(tmp_path):
    # The stop's line went into the output submitit's submission is redirected to, and the command
    # exited 75 with no word, its jobs queued and no sweep.json naming them.
    flags = ["--dataset", "synthetic", "--synthetic-classes", "4", "--num-tasks", "2", "--n-repeats", "1",
             "--n-train-per-class", "16", "--n-test-per-class", "8", "--n-subsamples", "4", "--epochs", "1",
             "--batch-size", "16", "--log-frequency", "1", "--grid", "lr=0.1,0.2", "--results-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, "-c", _STOPPED_SUBMISSION, *flags], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 75, done.stderr
    assert "submitted 2 job(s) to slurm" in done.stdout
    listed = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert [r["job_id"] for r in listed] == ["900", "901"]
    assert done.stderr.strip().endswith(
        f"stopped by SIGTERM: the 2 job(s) go on ({tmp_path / 'sweep.json'} lists them); cancel them with `scancel "
        f"900 901`, or let them end and run the same command to see each run's outcome (a finished run is not trained "
        f"again).")
    listed = (tmp_path / "sweep.json").read_bytes()
    hung = subprocess.run([sys.executable, "-c", _STOPPED_SUBMISSION, *flags], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HANGS": "1"})
    assert hung.returncode == 75 and hung.stdout == "" and (tmp_path / "sweep.json").read_bytes() == listed
    assert hung.stderr.strip().splitlines()[-1] == (
        f"stopped by SIGINT: the jobs were being submitted: some may be queued or running, and no sweep.json lists "
        f"them; check squeue (SLURM) or the *_submitted.pkl files in {max((tmp_path / 'sweep_logs').iterdir())} "
        f"before submitting again")


def test_a_run_a_sweep_already_lists_under_another_name_is_refused(tmp_path):
    # The --grid flags in another order (or a setting moved between --grid and its own flag) named
    # the same runs otherwise: every run was trained again, and compare counted each twice.
    runs = sweep.expand(base_of(tmp_path), {"lr": [0.1], "momentum": [0.0, 0.9]}, [0])
    for run in runs:
        sweep.run_job(run.config.to_dict(), progress=False)
    sweep.write_manifest(tmp_path / "sweep.json", runs, [SimpleNamespace(job_id=str(i)) for i in range(2)], "local",
                         tmp_path / "logs")
    sweep.check_not_trained_twice(runs)  # the same sweep again: its own folders
    swapped = sweep.expand(base_of(tmp_path), {"momentum": [0.0, 0.9], "lr": [0.1]}, [0])
    with pytest.raises(CljaxError, match=r"^run momentum-0\.0_lr-0\.1_seed-0 has the settings and seed of .*"
                                         r"lr-0\.1_momentum-0\.0_seed-0/synthetic/SL_T2, which .*sweep\.json lists, so it "
                                         r"would train that run again under a second name: give --grid as that sweep did"):
        sweep.check_not_trained_twice(swapped)
    moved = sweep.expand(base_of(tmp_path, lr=0.1), {"momentum": [0.0, 0.9]}, [0])
    with pytest.raises(CljaxError, match=r"^run momentum-0\.0_seed-0 has the settings and seed of "):
        sweep.check_not_trained_twice(moved)
    sweep.check_not_trained_twice(sweep.expand(base_of(tmp_path), {"momentum": [0.0, 0.9], "lr": [0.2]}, [0]))
