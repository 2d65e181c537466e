"""SIGTERM/SIGINT stop `cljax analyze` at once, also while it waits in compiled code, and never
while it writes its files (the command line's stop lock, cljax.stopping.stoppable)."""

import json
import subprocess
import sys
import time

from tests.test_analysis_driver import write_fake_run

BLOCKED = """
import sys
import jax
import jax.numpy as jnp
from cljax import cli
from cljax.analysis import driver

def blocked(*args, **kwargs):  # a long compiled analysis (the GLUE of a long run): no bytecode runs
    print("computing", flush=True)
    step = lambda i, v: jnp.sin(v) + 1e-3
    jax.jit(lambda x: jax.lax.fori_loop(0, 2**31 - 1, step, x))(jnp.float32(1)).block_until_ready()

driver.analyze_run = blocked
sys.exit(cli.main(["analyze", sys.argv[1]]))
"""


def test_sigterm_stops_analyze_while_it_waits_in_compiled_code(tmp_path):
    # Python runs signal handlers on the main thread between bytecodes: with the analysis on the
    # main thread, SIGTERM waited for the compiled call (minutes; SLURM kills first).
    (tmp_path / "run" / "task_000").mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED, str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "computing\n"
    time.sleep(1.0)  # inside the compiled loop by now
    sent = time.time()
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("cljax analyze did not stop within 30 s of SIGTERM")
    assert time.time() - sent < 10
    assert proc.returncode == 75, err
    assert err.count("stopped by SIGTERM") == 1 and "Traceback" not in err


WRITING = """
import os, signal, sys, time
from cljax import cli
from cljax.analysis import out_folder

replace, stopped = os.replace, []

def stopped_while_renaming(src, dst):  # the first rename (summary.json), under the stop lock
    if not stopped:
        stopped.append(dst)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)  # the handler has run by now, and waits for the lock
    replace(src, dst)

out_folder.os = type(os)("os_with_a_stop")
out_folder.os.__dict__.update({k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
out_folder.os.replace = stopped_while_renaming
sys.exit(cli.main(["analyze", sys.argv[1], "--no-glue", "--no-plots"]))
"""


def test_a_stop_while_analyze_renames_its_files_waits_for_the_whole_analysis(tmp_path):
    algo = tmp_path / "run"
    write_fake_run(algo)
    proc = subprocess.run([sys.executable, "-c", WRITING, str(algo)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75, proc.stderr
    assert proc.stderr.count("stopped by SIGTERM") == 1 and "Traceback" not in proc.stderr
    out = algo / "analysis"
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(summary["files"])  # every file, no temporary one
    assert summary["n_task_folders"] == 3 and summary["complete"]


DRAWING = """
import os, signal, sys, time
import numpy
from cljax import cli
from cljax.analysis import driver

def stopped_while_drawing(*args, **kwargs):  # an analysis's file written under its temporary name
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5.0)  # it was waited for: the stop lock was held over the whole write

driver.np = type(numpy)("numpy_with_a_stop")
driver.np.__dict__.update(numpy.__dict__)
driver.np.savez_compressed = stopped_while_drawing
sys.exit(cli.main(["analyze", sys.argv[1], "--no-glue", "--no-plots"]))
"""


def test_a_stop_while_analyze_draws_its_files_stops_at_once_and_keeps_the_earlier_analysis(tmp_path):
    algo = tmp_path / "run"
    write_fake_run(algo)
    from cljax.cli import main

    assert main(["analyze", str(algo), "--no-glue", "--no-plots"]) == 0  # the earlier analysis: no process of its own
    before = {p.name: p.read_bytes() for p in (algo / "analysis").iterdir()}
    proc = subprocess.run([sys.executable, "-c", DRAWING, str(algo)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75 and "stopped by SIGTERM" in proc.stderr, proc.stderr
    kept = {p.name: p.read_bytes() for p in (algo / "analysis").iterdir() if not p.name.startswith(".")}
    assert kept == before  # the earlier analysis, whole; only temporaries beside it, which the next one removes


_SIGNAL_BETWEEN_HANDLERS = """
import signal, sys
import cljax.command as command
real = signal.signal

def setting(sig, handler):  # a SIGINT just after SIGTERM's handler is set, before SIGINT's
    before = real(sig, handler)
    if sig == signal.SIGTERM:
        signal.raise_signal(signal.SIGINT)
    return before

command.signal.signal = setting
sys.argv = ["cljax", "--help"]
sys.exit(command.main())
"""


def test_a_signal_while_the_command_sets_its_handlers_waits_for_them_all():
    """The entry point sets its stop handlers one by one: a SIGINT between SIGTERM's and its own
    printed a KeyboardInterrupt traceback (seen once in the suite, on the preparation's signal test)."""
    result = subprocess.run([sys.executable, "-c", _SIGNAL_BETWEEN_HANDLERS], capture_output=True, text=True, timeout=60)
    assert result.returncode == 75 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == "stopped by SIGINT: nothing was left half-written; run the same command again."
