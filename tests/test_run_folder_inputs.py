"""The run folder, part 3: one line for every damaged or hostile input. Part 4, nothing stale
or misleading left behind: test_run_folder_stale.py."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cljax import results
from cljax.config import Config
from cljax.errors import CljaxError
from tests.conftest import small_config
from tests.run_folder_kit import FLAGS, RUN_DIR, TINY, assert_one_error, copy, make_runs, run_cli, state


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_runs(tmp_path_factory)


# ---- 7. one line for every damaged or hostile input --------------------------------------------------------
def test_analyze_a_partial_run_reports_undefined_metrics(made, tmp_path, capsys):
    run_dir = copy(made, "partial", tmp_path / "r")
    rc, out, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert rc == 0, err
    assert "bwt: undefined (it needs 2 tasks or more: 1 trained so far)\n" in out  # not "left out: not finite"
    assert out.startswith("partial run: the first 1 of its 2 tasks (finish it with the same `cljax run` command)\n")


def test_analyze_a_run_while_it_is_written_says_so_and_names_the_writer(made, tmp_path, capsys):
    # "finish it with the same command" would be wrong advice while the run is still going: that
    # command would be refused by the run's lock. The summary names the writer.
    from cljax.run_lock import RunLock

    run_dir = copy(made, "partial", tmp_path / "r")
    with RunLock(run_dir):  # what a live `cljax run` holds while it writes the folder
        rc, out, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert rc == 0, err
    assert out.startswith(f"run in progress (pid {os.getpid()} on ")
    assert "the first 1 of its 2 tasks, those written so far; analyse it again when it ends\n" in out
    writer = json.loads((run_dir / "analysis" / "summary.json").read_text())["in_progress"]
    assert writer["pid"] == os.getpid() and set(writer) == {"host", "pid", "since"}
    rc, out, _ = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)  # the run has stopped
    assert rc == 0 and out.startswith("partial run: the first 1 of its 2 tasks")
    assert json.loads((run_dir / "analysis" / "summary.json").read_text())["in_progress"] is None


@pytest.mark.parametrize("how", ["truncated", "bit_flip"])
def test_a_damaged_checkpoint_is_one_line(made, tmp_path, capsys, how):
    run_dir = copy(made, "partial", tmp_path / "r")
    ckpt = run_dir / "checkpoint.npz"
    if how == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    else:
        raw = bytearray(ckpt.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        ckpt.write_bytes(bytes(raw))
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "checkpoint.npz is damaged", "--overwrite")
    assert state(run_dir) == before


def test_disk_is_checked_in_whole_blocks_and_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import cljax.experiment as experiment
    from cljax.budget import Budget
    from cljax.budget_disk import disk_files_per_task, disk_run_files
    from cljax.checkpoint import CHECKPOINT
    from cljax.program import build_task_program

    from cljax.tasks import make_schedule

    config = small_config(tmp_path, **TINY)
    budget = Budget.of(config, build_task_program(config, (28, 28)), (28, 28))
    names = [f"synthetic_{c}" for c in range(4)]
    # The planner's byte figures for the first task and the checkpoint: enough only if files took no whole blocks.
    exact = sum(disk_files_per_task(budget, make_schedule(4, 2, 2, 0), names).values()) + disk_run_files(budget)[CHECKPOINT]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - exact, exact))
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "not enough disk", "bytes", f"({exact:,} bytes) are free")
    monkeypatch.undo()

    for code in (errno.ENOSPC, errno.EDQUOT):  # a full disk, or a full quota
        def full(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code), str(tmp_path / "r"))

        monkeypatch.setattr(experiment, "write_run_record", full)
        rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
        assert_one_error(rc, err, "no space left", os.strerror(code), "free space, then run the same command")


def _npy_with_header(path: Path, header: bytes):
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)


ANALYZE_DAMAGE = {
    "missing_npy": (lambda d: (d / "task_000" / "weights.npy").unlink(), "weights.npy is missing"),
    "truncated_npy": (lambda d: (d / "task_000" / "representations.npy").write_bytes(
        (d / "task_000" / "representations.npy").read_bytes()[:200]), "representations.npy is truncated"),
    "object_npy": (lambda d: np.save(d / "task_000" / "representations.npy", np.array([{}, 1], dtype=object),
                                     allow_pickle=True), "holds Python objects"),
    "huge_header": (lambda d: _npy_with_header(d / "task_000" / "representations.npy", b"{" + b" " * 60000 + b"}\n"),
                    "representations.npy is not a readable .npy file"),
    "metadata_not_json": (lambda d: (d / "task_000" / "metadata.json").write_bytes(b"\xff\xfe{"),
                          "metadata.json is not valid JSON"),
    "metrics_truncated": (lambda d: (d / "task_000" / "metrics.pkl").write_bytes(
        (d / "task_000" / "metrics.pkl").read_bytes()[:40]), "metrics.pkl has 40 bytes"),
}


@pytest.mark.parametrize("damage", sorted(ANALYZE_DAMAGE))
def test_analyze_of_a_damaged_file_is_one_line_naming_it(made, tmp_path, capsys, damage):
    run_dir = copy(made, "finished", tmp_path / "r")
    how, expected = ANALYZE_DAMAGE[damage]
    how(run_dir)
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert_one_error(rc, err, expected, str(run_dir / "task_000"))
    assert "do not trust" not in err  # a damaged file is not reported as a hostile one


def test_analyze_bad_options_and_an_unwritable_output_are_one_line(made, tmp_path, capsys):
    run_dir = copy(made, "finished", tmp_path / "r")
    rc, _, err = run_cli(["analyze", str(run_dir), "--glue-probes", "0"], capsys)
    assert_one_error(rc, err, "--glue-probes must be at least 2")
    (tmp_path / "a_file").write_text("x")
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots", "--out", str(tmp_path / "a_file" / "out")],
                         capsys)
    assert_one_error(rc, err, "is a file, not a folder", "--out")
    other = copy(made, "finished", tmp_path / "other")
    before = state(tmp_path)
    for out, expected in (("", "--out is empty"), (str(other), "is a run's folder"), (str(run_dir), "run.json"),
                          (str(other / "analysis"), "inside another run's folder"),  # would replace its summary
                          (str(other / "task_000" / "x"), "inside another run's folder")):
        rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots", "--out", out], capsys)
        assert_one_error(rc, err, expected, "--out")  # "" wrote into the current folder, a run's mixed with its files
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots", "--out", str(run_dir / "analysis")], capsys)
    assert rc == 0, err  # its own analysis folder, spelled out
    before = state(tmp_path)
    for not_a_run, names in ((tmp_path / "r", f"it holds runs: pass one of them, e.g. {run_dir}."),  # the results root
                             (run_dir / "task_000", f"task_000 is a task folder: pass its run's folder, {run_dir}.")):
        rc, _, err = run_cli(["analyze", str(not_a_run), "--no-glue", "--no-plots"], capsys)
        assert_one_error(rc, err, names)
    assert state(tmp_path) == before
    for flag in ("--json", "--out"):  # compare: an output it cannot write is refused before the comparison
        for path, expected in (("", "is empty"), (str(tmp_path / "nowhere" / "c"), "does not exist"),
                               (str(tmp_path), "is a folder")):
            rc, out, err = run_cli(["compare", str(run_dir), flag, path], capsys)
            assert_one_error(rc, err, flag, expected)
            assert out == ""
    if os.geteuid() != 0:  # root writes into read-only folders
        run_dir.chmod(0o555)
        try:
            rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
        finally:
            run_dir.chmod(0o755)
        assert_one_error(rc, err, "analysis", "--out")


@pytest.mark.parametrize("record", ["list", "string", "folder", "huge", "split", "schema", "lowering"])
def test_a_run_record_of_the_wrong_kind_is_one_line(made, tmp_path, capsys, record):
    run_dir = copy(made, "partial", tmp_path / "r")  # a run to resume: every field is read
    path = run_dir / "run.json"
    fields = json.loads(path.read_text())
    path.unlink()
    if record == "list":
        path.write_text("[1, 2]")
    elif record == "string":
        path.write_text('"run"')
    elif record == "folder":
        path.mkdir()
    elif record == "huge":
        path.write_bytes(b" " * (1 << 24) + b"{}")
    else:  # a field of another type (they raised AttributeError / TypeError)
        changed = {"split": {"split": "garbage"}, "schema": {"schema": "3"},
                   "lowering": {"split": {**fields["split"], "lowering": 5}}}[record]
        path.write_text(json.dumps({**fields, **changed}))
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "run.json")
    assert state(run_dir) == before


def test_a_lost_run_record_is_named_as_lost(made, tmp_path, capsys):
    # The folder was called "files that are not a cljax run", with --overwrite the only way out.
    # With task folders, --repair writes it again (tests/test_record_rebuild.py); a checkpoint alone cannot.
    run_dir = copy(made, "partial", tmp_path / "r")
    (run_dir / "run.json").unlink()
    shutil.rmtree(run_dir / "task_000")
    before = state(run_dir)
    for repair in ([], ["--repair"]):
        rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), *repair], capsys)
        assert_one_error(rc, err, f"{run_dir / 'run.json'} is missing, and the folder holds a cljax run's checkpoint: "
                                  f"restore run.json from a copy, or pass --overwrite")
        assert state(run_dir) == before


@pytest.mark.parametrize("value", ["fast", -5.0])
def test_an_edited_setting_in_the_run_record_is_named_as_damage_not_as_a_value_to_pass(made, tmp_path, capsys, value):
    # It said "lr recorded 'fast', now 0.1. Pass the recorded values", which no command line can.
    run_dir = copy(made, "partial", tmp_path / "r")
    path = run_dir / "run.json"
    fields = json.loads(path.read_text())
    path.write_text(json.dumps({**fields, "config": {**fields["config"], "lr": value}}))
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "run.json records a setting no run could have (", "--lr",
                     "changed or damaged; restore it from a copy, or pass --overwrite")
    assert "Pass the recorded values" not in err and state(run_dir) == before


def test_a_run_written_by_a_newer_cljax_is_neither_resumed_nor_read(made, tmp_path, capsys):
    """A record of a later schema than this cljax knows: its files may mean what this cljax does
    not know. It was accepted when its settings matched (a finished run reported as finished, a
    partial one resumed with this cljax's files among the newer ones, either one analysed or
    compared). --overwrite still deletes it."""
    for which in ("finished", "partial"):
        run_dir = copy(made, which, tmp_path / which)
        path = run_dir / "run.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "schema": 99}))
        before = state(run_dir)
        rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / which)], capsys)
        assert_one_error(rc, err, "run.json was written by a newer cljax (record schema 99", "--overwrite")
        for command in (["analyze", str(run_dir), "--no-glue", "--no-plots"], ["compare", str(run_dir)]):
            rc, _, err = run_cli(command, capsys)  # compare reads a damaged record's runs from their folders
            assert_one_error(rc, err, "written by a newer cljax", "`cljax run ... --overwrite`")
        assert state(run_dir) == before
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "partial"), "--overwrite"], capsys)
    assert rc == 0 and json.loads(path.read_text())["schema"] < 99


def test_a_run_recorded_with_an_empty_data_dir_resumes_without_the_flag():
    # --data-dir "" was accepted (and read the standard place) before it was refused.
    from cljax.setting_match import setting_differences

    config = Config.from_flat({"dataset": "fashion_mnist"})
    assert setting_differences({**config.to_dict(), "data_dir": ""}, config) == {}


def test_a_layer_rate_given_equal_to_the_rate_it_defaults_to_resumes():
    """--lr-features / --lr-classifier unset take --lr (the rule's 0.05 for SL): passed at that
    value they change no number, so a run recorded without them resumes with them, and the
    reverse; another value is a difference, and a changed --lr is one setting, not three."""
    from cljax.setting_match import setting_differences

    unset = Config.from_flat({"dataset": "fashion_mnist"})
    same = Config.from_flat({"dataset": "fashion_mnist", "lr_features": 0.05, "lr_classifier": 0.05})
    assert unset.to_dict()["lr_features"] is None  # the record keeps what was given
    assert setting_differences(unset.to_dict(), same) == {} and setting_differences(same.to_dict(), unset) == {}
    other = Config.from_flat({"dataset": "fashion_mnist", "lr_classifier": 0.1})
    assert setting_differences(unset.to_dict(), other) == {"lr_classifier": (None, 0.1)}
    faster = Config.from_flat({"dataset": "fashion_mnist", "lr": 0.1})  # the layer rates follow it: only lr differs
    assert setting_differences(unset.to_dict(), faster) == {"lr": (0.05, 0.1)}


@pytest.mark.parametrize("meta", ["[1, 2]", '{"format_version": 1, "files": {}}'])
def test_data_info_and_plan_of_a_damaged_prepared_folder_are_one_line(tmp_path, capsys, meta):
    from cljax.data.prepared import write_prepared

    folder = tmp_path / "prepared"
    labels = np.repeat(np.arange(4), 5)
    write_prepared(folder, np.zeros((20, 28, 28), np.uint8), labels, np.zeros((20, 28, 28), np.uint8), labels,
                   name="tiny", source="test", preprocessing={})
    (folder / "meta.json").write_text(meta)
    for args in (["data-info", str(folder)],
                 ["plan", "--dataset", "imagenet_28_gray", "--data-dir", str(folder), "--num-tasks", "1"]):
        rc, _, err = run_cli(args, capsys)
        assert_one_error(rc, err, str(folder / "meta.json"))


def test_a_synthetic_dataset_too_large_for_memory_is_one_line(tmp_path, capsys, monkeypatch):
    import cljax.devices.memory as memory

    monkeypatch.setattr(memory, "host_available_bytes", lambda: 2**30)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--synthetic-classes", "1000",
                          "--n-train-per-class", "2000"], capsys)
    assert_one_error(rc, err, "synthetic dataset", "--synthetic-classes")
    assert not (tmp_path / "r").exists()


def _catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


# Runs `python -m cljax.cli ARGS` (runpy is what -m uses) with an import hook that writes, when
# `jax` is first imported, whether SIGTERM had a Python handler then. The order is read inside the
# process, so the test does not depend on polling it from outside fast enough under load.
_WATCH_JAX_IMPORT = """
import os, runpy, signal, sys
out_path = sys.argv[1]
class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "jax":
            sys.meta_path.remove(self)
            with open(out_path + ".tmp", "w") as out:
                out.write("handled" if callable(signal.getsignal(signal.SIGTERM)) else "default")
            os.replace(out_path + ".tmp", out_path)  # the signal may stop this hook: no file, never an empty one
        return None
sys.meta_path.insert(0, _Watch())
sys.argv = ["cljax"] + sys.argv[2:]
runpy.run_module("cljax.cli", run_name="__main__", alter_sys=True)
"""


def test_the_command_handles_signals_before_it_imports_cljax_cli():
    # The handler was installed in cljax.cli.main, after that module's imports (cljax.config and
    # others, tens of milliseconds): a Ctrl-C then printed a traceback, a SIGTERM killed it silently.
    script = _WATCH_JAX_IMPORT.replace('name == "jax"', 'name == "cljax.config"').replace(
        'runpy.run_module("cljax.cli"', 'runpy.run_module("cljax"')
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "at_config_import"
        proc = subprocess.run([sys.executable, "-c", script, str(out), "--help"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and out.read_text() == "handled", (proc.stderr, out.read_text())
    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cljax"] == "cljax.command:main"  # the installed `cljax` starts the same way


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_right_after_start_exits_75_with_one_line(tmp_path, sig):
    at_jax_import = tmp_path / "sigterm_at_jax_import"
    proc = subprocess.Popen([sys.executable, "-c", _WATCH_JAX_IMPORT, str(at_jax_import), "run", *FLAGS,
                             "--results-dir", str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The signal goes as soon as the process handles SIGTERM, which must be before it even loads
    # JAX (Python alone handles SIGINT as KeyboardInterrupt and leaves SIGTERM to kill it).
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not _catches_sigterm(proc.pid):
        time.sleep(0.002)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if at_jax_import.exists():  # a slow poll lets the process reach JAX before the signal
        assert at_jax_import.read_text() == "handled", "SIGTERM was handled only after JAX was loaded"
    assert proc.returncode == 75, err
    assert "Traceback" not in err and f"stopped by {sig.name}" in err
    assert not any((tmp_path / "r" / RUN_DIR).glob("task_*"))


# `python -m cljax.cli` (no command: the usage, exit code 2), then, once main() has returned and
# the interpreter is about to shut down, a signal to itself: the window a signal at a command's
# very end falls in.
_SIGNAL_AFTER_THE_END = """
import os, runpy, signal, sys, time
sig = signal.Signals[sys.argv[1]]
sys.argv = ["cljax"]
try:
    runpy.run_module("cljax.cli", run_name="__main__", alter_sys=True)
except SystemExit:
    os.kill(os.getpid(), sig)
    time.sleep(30)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_after_the_command_has_ended_keeps_its_exit_code(sig):
    """The default handler, put back at the end, killed the process (143 for SIGTERM) as if the
    command had not finished; now the command's own code comes back, with one line."""
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_THE_END, sig], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"stopped by {sig} after the command had ended (exit code 2): " \
                                                   f"its output is whole."
    assert "Traceback" not in proc.stderr


def test_a_closed_output_pipe_ends_the_command_quietly():
    """`cljax ... | head` closes stdout before the command writes it: no error line (it said
    "Broken pipe: check the path and its permissions") and no traceback at the interpreter's exit,
    and the shell's status for a closed pipe, 141."""
    proc = subprocess.Popen([sys.executable, "-m", "cljax.cli", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child has even imported cljax
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err


def test_the_readers_raise_the_project_error_naming_the_file(tmp_path):
    task = tmp_path / "task_000"
    task.mkdir()
    (task / "metadata.json").write_text("[1, 2]")
    with pytest.raises(CljaxError, match="metadata.json holds a JSON list"):
        results.load_metadata(task)
    (task / "metadata.json").write_bytes(b"\x80\x81")
    with pytest.raises(CljaxError, match="metadata.json is not valid JSON"):
        results.load_metadata(task)
    np.save(task / "binary_labels.npy", np.zeros((2, 3), np.uint8))
    size = (task / "binary_labels.npy").stat().st_size
    (task / "binary_labels.npy").write_bytes((task / "binary_labels.npy").read_bytes()[:-2])
    with pytest.raises(CljaxError, match=rf"binary_labels.npy is truncated \({size - 2} bytes, {size} expected\)"):
        results.load_binary_labels(task)
    np.save(task / "weights.npy", np.zeros(3, np.float32))
    with pytest.raises(CljaxError, match="not the structured array"):
        results.load_weights(task)
    good = pickle.dumps({"test_acc": np.zeros(3)}, protocol=4)
    (task / "metrics.pkl").write_bytes(good[:-10])
    with pytest.raises(CljaxError, match="metrics.pkl is truncated or damaged") as truncated:
        results.load_metrics(task)
    assert "do not trust" not in str(truncated.value)
    (task / "metrics.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CljaxError, match="holds a list, not the dict"):
        results.load_metrics(task)
    (task / "metrics.pkl").write_bytes(pickle.dumps({"x": os.system}))
    with pytest.raises(CljaxError, match="refusing to load posix.system.*do not trust it"):
        results.load_metrics(task)


def test_a_network_too_large_to_save_or_too_deep_to_build_is_one_line(tmp_path, capsys):
    # A width past numpy's 2 GiB record was a ValueError traceback; --mlp-depth 2**31 - 1 built
    # layers for 20 minutes and did not stop on SIGTERM.
    for extra, words in ((["--model", "mlp", "--mlp-hidden", "2147483647"], "bytes of parameters per repeat"),
                         (["--model", "mlp", "--mlp-hidden", "30000", "--mlp-depth", "3"],
                          "the network has 7,294,560,004 bytes of parameters per repeat"),
                         (["--model", "resnet", "--resnet-width", "2147483647"], "bytes of parameters per repeat"),
                         (["--model", "mlp", "--mlp-depth", "2147483647"], "--mlp-depth must be at most 1000")):
        flags = FLAGS[:FLAGS.index("--model")] + FLAGS[FLAGS.index("--mlp-hidden") + 2:]  # the FLAGS' mlp out
        rc, _, err = run_cli(["plan", *flags, "--results-dir", str(tmp_path / "r"), *extra], capsys)
        assert_one_error(rc, err, words)
    assert not (tmp_path / "r").exists()


def test_a_results_dir_name_too_long_names_the_fix(tmp_path, capsys):
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / ("b" * 300))], capsys)
    assert_one_error(rc, err, "File name too long")
    assert "shorten the path (a name of at most 255 bytes" in err and "permissions" not in err
    rc, _, err = run_cli(["plan", *FLAGS, "--results-dir", str(tmp_path / "r"), "--synthetic-classes", "3"], capsys)
    assert_one_error(rc, err, "use at most 1 task, or --task-schedule cycle")
    # plan refuses a --results-dir that run would refuse (it printed a plan for a file).
    (tmp_path / "a-file").write_text("notes")
    for command in ("plan", "run"):
        rc, _, err = run_cli([command, *FLAGS, "--results-dir", str(tmp_path / "a-file")], capsys)
        assert_one_error(rc, err, f"{tmp_path / 'a-file'} is a file, not a folder: choose another --results-dir")
    assert (tmp_path / "a-file").read_text() == "notes"


def test_a_results_dir_inside_a_run_folder_is_refused(made, tmp_path, capsys):
    # --results-dir given as a run's folder nested a second run inside the first (the first one
    # still verified, and every command read it).
    run_dir = copy(made, "finished", tmp_path / "r")
    before = state(run_dir)
    for command in ("run", "plan"):
        rc, _, err = run_cli([command, *FLAGS, "--results-dir", str(run_dir)], capsys)
        assert_one_error(rc, err, f"would lie inside the run folder {run_dir} (it holds run.json): --results-dir is "
                                  f"the folder under which a run goes to {{dataset}}/{{algorithm}}", str(tmp_path / "r"))
    assert state(run_dir) == before
    # ... also one that lost its run.json, which run calls a cljax run's folder (found by the adversarial helper)
    (run_dir / "run.json").unlink()
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(run_dir)], capsys)
    assert_one_error(rc, err, f"would lie inside the run folder {run_dir} (it holds task_000)")
    # ... but another tool's run.json above --results-dir is not a run's (it refused every run under it)
    (tmp_path / "project" / "results").mkdir(parents=True)
    (tmp_path / "project" / "run.json").write_text('{"steps": 3}')
    rc, _, err = run_cli(["plan", *FLAGS, "--results-dir", str(tmp_path / "project" / "results")], capsys)
    assert rc == 0, err
    # A run's folder that holds a run below it (moved there by hand) is not "pass one of them":
    # run takes --results-dir, not a run's folder (found in review).
    other = tmp_path / "o" / run_dir.relative_to(tmp_path / "r")
    (other / "old").mkdir(parents=True)
    shutil.copytree(run_dir / "task_000", other / "old" / "task_000")
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "o")], capsys)
    assert_one_error(rc, err, f"{other} holds files that are not a cljax run: choose another --results-dir")
