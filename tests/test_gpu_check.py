"""`make gpu-check` works before any GPU time is spent on it: its smoke mode runs every stage at
a tiny size on the CPU and writes the JSON and the summary; a stage past its limit is killed
with its children and reported, and the stages after it still run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax

from tests.conftest import FASHION_DIR, load_script
from tests.gpu_check_kit import SCRIPT, load_gpu_check, load_tests_stage

# The smoke's stages run on the CPU, on a GPU machine too, unless JAX_PLATFORMS names a backend.
SMOKE_ON_CPU = os.environ.get("JAX_PLATFORMS", "") in ("", "cpu")


def test_the_smoke_mode_runs_every_stage_and_writes_json_and_a_summary(tmp_path):
    out = tmp_path / "check"
    exported = tmp_path / "device_out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--fashion-dir", str(FASHION_DIR),
                           "--follow-up", "30", "--export", str(exported)], capture_output=True, text=True, timeout=600)
    report = json.loads((out / "check.json").read_text())
    assert proc.returncode == 0, json.dumps({k: v.get("log_tail") for k, v in report["stages"].items()})[-3000:]
    stages = report["stages"]
    assert list(stages) == ["env", "tests", "throughput", "throughput_large", "profile", "fashion", "lop", "variants",
                            "deterministic"]
    assert stages.pop("deterministic") == {"status": "skipped", "why": "not asked for"}  # optional: a second call
    assert report["finished"] and report["all_ok"] and all(s["status"] == "ok" for s in stages.values())

    env = stages["env"]["result"]
    assert env["backend"] == ("cpu" if SMOKE_ON_CPU else jax.default_backend()) and env["missing"] == []
    assert stages["tests"]["result"]["tests"] == 1 and stages["tests"]["result"]["failures"] == 0
    assert (out / "junit.xml").exists()
    rows = stages["variants"]["result"]["rows"]
    default, again, precision, combined = rows
    assert default["variant"] == "default" and default["lowering"]["matmul_precision"] == "highest"
    assert again["variant"] == "default, compiled again" and again["lowering"] == default["lowering"]
    assert precision["lowering"]["matmul_precision"] == "default"
    assert all(row["run_to_run_max_diff"] >= 0 for row in rows) and again["max_train_loss_diff"] >= 0
    if SMOKE_ON_CPU:  # XLA:CPU computes float32 dots in float32 at every precision
        assert precision["max_weight_diff_relative_to_max_weight"] == 0.0 and precision["max_train_loss_diff"] == 0.0
        # and its programs are deterministic: the same executable, and a second compilation, give the same bits
        assert all(row["run_to_run_max_diff"] == 0.0 for row in rows)
        assert again["max_weight_diff_relative_to_max_weight"] == 0.0 and again["max_train_acc_diff"] == 0.0
    low = combined["lowering"]
    assert (low["compute_dtype"], low["scan_unroll"]) == ("bfloat16", 2)
    assert low["learner_expert"] != default["lowering"]["learner_expert"]
    assert 0 < combined["max_weight_diff_relative_to_max_weight"] < 0.1  # bfloat16 moves the weights, a little
    # both throughput stages time the profile's program (R = 2), loaded from the smoke's compilation cache
    assert stages["profile"]["result"]["settings"]["repeats"] == 2
    for name in ("throughput", "throughput_large"):
        rows = stages[name]["result"]["rows"]
        assert [(r["impl"], r["repeats"]) for r in rows] == [("cljax", 2)] and rows[0]["samples_per_s"] > 0
    assert any((out / load_gpu_check().SMOKE_CACHE).glob("jit_run_task*"))
    for name in ("fashion", "lop"):
        run = stages[name]["result"]
        assert run["tasks_finished"] == 2 and len(run["seconds_per_task"]) == 2
        assert all(s > 0 for s in run["seconds_per_task"]) and run["lowering"]["matmul_precision"] == "highest"
        assert len(run["wall_seconds_between_tasks"]) == 1 and run["wall_seconds_between_tasks"][0] > 0

    summary = (out / "summary.md").read_text()
    for heading in ("## Environment", "## GPU-relevant tests", "## Precision, bfloat16 and lowering variants",
                    "## Profile of the task program",
                    "## Throughput: cljax against the torch peers, the smaller R\n\nR = 2\n",
                    "## Throughput: cljax against the torch peers, the larger R\n\nR = 2\n", "## Fashion-MNIST run",
                    "## Loss-of-plasticity-shaped run", "## Goals and the next call"):
        assert heading in summary
    assert "could not summarise" not in summary and 'GPU_CHECK_ARGS="--stages tests --tests rest' in summary
    # --follow-up made that second call at once (no candidate at the smoke's size, the CPU's bits repeat)
    assert report["follow_up"] == {"args": "--stages tests --tests rest --limit tests=180", "out": "follow_up",
                                   "why": report["follow_up"]["why"], "all_ok": True,
                                   "stages": {name: "ok" if name == "tests" else "skipped" for name in stages} | {
                                       "deterministic": "skipped"}}
    second = json.loads((out / "follow_up" / "check.json").read_text())
    assert second["stages"]["tests"]["result"]["failures"] == 0 and second["budget_seconds"] == 30
    assert "It ran in this call as its follow-up (`--follow-up`): tests ok; all ok: True" in summary
    assert "| fashion | ok |" in summary and "seconds per task:" in summary
    # What the device tool brings back: at most 8 flat files under 16 MiB each (the run folders
    # and the trace stay behind); the summaries whole, everything else small in one archive.
    import tarfile

    files = sorted(p.name for p in exported.iterdir())
    assert files == ["check.json", "follow_up_check.json", "follow_up_summary.md", "logs.tar.gz", "summary.md"]
    assert all(p.is_file() and p.stat().st_size < 16 << 20 for p in exported.iterdir())
    assert (exported / "summary.md").read_text() == summary
    with tarfile.open(exported / "logs.tar.gz") as archive:
        names = archive.getnames()
    assert "variants.log" in names and "follow_up/tests.log" in names and "junit.xml" in names
    assert not [n for n in names if n.startswith(("runs/", "profile_trace/"))]


def test_the_exit_status_counts_the_follow_up():
    exit_status = load_gpu_check().exit_status
    assert exit_status({"all_ok": True}) == 0
    assert exit_status({"all_ok": True, "follow_up": {"skipped": "no variants result to choose it from"}}) == 0
    assert exit_status({"all_ok": True, "follow_up": {"args": "--stages deterministic", "all_ok": False}}) == 1
    assert exit_status({"all_ok": False, "follow_up": {"args": "--stages deterministic", "all_ok": True}}) == 1


def test_the_smoke_runs_on_the_cpu_unless_jax_platforms_names_a_backend(tmp_path):
    smoke_env = load_gpu_check().smoke_env
    level = {"XLA_FLAGS": "--xla_backend_optimization_level=1"}  # set: no probe of XLA's flags
    assert smoke_env(level, tmp_path)["JAX_PLATFORMS"] == "cpu"
    assert smoke_env({**level, "JAX_PLATFORMS": ""}, tmp_path)["JAX_PLATFORMS"] == "cpu"
    assert smoke_env({**level, "JAX_PLATFORMS": "cuda"}, tmp_path)["JAX_PLATFORMS"] == "cuda"


def test_without_the_fashion_data_its_stages_fail_at_once_and_the_others_run(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--fashion-dir",
                           str(tmp_path / "nowhere"), "--stages", "tests", "variants", "fashion", "lop"],
                          capture_output=True, text=True, timeout=300)
    stages = json.loads((out / "check.json").read_text())["stages"]
    assert proc.returncode == 1
    for name in ("tests", "variants", "fashion"):
        assert stages[name] == {"status": "failed", "why": f"no Fashion-MNIST IDX files in {tmp_path / 'nowhere'}"}
    assert stages["lop"]["status"] == "ok"  # synthetic data: it runs
    assert stages["deterministic"] == {"status": "skipped", "why": "not asked for"}  # not failed: not asked for
    # A second call that reads no Fashion-MNIST, from another folder with a relative --out: it passes
    # (its stages run in the checkout's root, so --out is made absolute first).
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", "second", "--fashion-dir",
                           str(tmp_path / "nowhere"), "--stages", "env"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    report = json.loads((tmp_path / "second" / "check.json").read_text())
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert report["stages"]["env"]["status"] == "ok" and report["stages"]["tests"]["status"] == "skipped"


def test_a_stage_asked_for_and_left_without_time_is_not_ok(tmp_path):
    """A budget with no room for the stages asked for: each is 'not run', the check is not ok and
    exits 1 (it said 'all stages ok: True', exit 0, having run nothing); a budget of 0 or less is
    one argparse line."""
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--fashion-dir", str(FASHION_DIR),
                           "--budget", "4", "--stages", "env", "lop"], capture_output=True, text=True, timeout=120)
    report = json.loads((out / "check.json").read_text())
    assert proc.returncode == 1 and report["all_ok"] is False
    for name in ("env", "lop"):
        assert report["stages"][name] == {"status": "not run", "why": "no time left in the budget"}
    assert "| env | not run (no time left in the budget) |" in (out / "summary.md").read_text()
    for budget in ("0", "-5", "nan"):
        proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--budget", budget],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "must be a finite number of seconds above 0" in proc.stderr, proc.stderr


def test_a_stage_past_its_limit_is_killed_with_its_children(tmp_path):
    gpu_check = load_gpu_check()
    marker = tmp_path / "child_still_running"
    # a stage whose own child would write the marker after 3 s, unless the whole group is killed at 1 s
    late = tmp_path / "late.py"
    late.write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w').close()\n")
    command = [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, {str(late)!r}]); "
               "time.sleep(60)"]
    t0 = time.monotonic()
    status, rc = gpu_check.run_stage(command, 1.0, tmp_path / "stage.log", {})
    assert (status, rc) == ("timeout", None) and time.monotonic() - t0 < 10
    time.sleep(3.5)
    assert not marker.exists()


def test_the_optional_deterministic_stage_runs_under_the_xla_flag_it_names(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--fashion-dir", str(FASHION_DIR),
                           "--stages", "deterministic"], capture_output=True, text=True, timeout=300)
    report = json.loads((out / "check.json").read_text())
    assert proc.returncode == 0, json.dumps(report["stages"]["deterministic"].get("log_tail"))[-3000:]
    assert [n for n, s in report["stages"].items() if s["status"] != "skipped"] == ["deterministic"]
    result = report["stages"]["deterministic"]["result"]
    assert "--xla_gpu_exclude_nondeterministic_ops=true" in result["xla_flags"].split()  # the child saw the flag
    default, again = result["rows"]
    assert (default["variant"], again["variant"]) == ("default", "default, compiled again")
    assert "error" not in default and again["lowering"] == default["lowering"]
    if SMOKE_ON_CPU:  # a GPU flag: XLA:CPU accepts it and its programs stay deterministic
        assert default["run_to_run_max_diff"] == again["run_to_run_max_diff"] == 0.0
        assert again["max_weight_diff_relative_to_max_weight"] == 0.0
    assert "## Under XLA's deterministic ops" in (out / "summary.md").read_text()


def test_a_variant_that_fails_is_a_row_that_says_why_and_the_stage_goes_on(tmp_path, monkeypatch):
    variants = load_script(SCRIPT.parent / "gpu_variants.py", "cljax_gpu_variants")
    gpu_check = load_gpu_check()
    real = variants.run_variant

    def fails_when_compiled_again(program, inputs, rounds, recompile):
        if recompile:
            raise RuntimeError("INTERNAL: no deterministic implementation of select-and-scatter")
        return real(program, inputs, rounds, recompile)

    monkeypatch.setattr(variants, "run_variant", fails_when_compiled_again)
    path = tmp_path / "variants.json"
    result = variants.measure_variants(str(FASHION_DIR), True, dict(gpu_check.SMOKE_SIZE), path, rounds=1)
    default, again, precision, combined = result["rows"]
    assert again["error"] == "RuntimeError: INTERNAL: no deterministic implementation of select-and-scatter"
    assert "samples_per_s" not in again and "speed_vs_default" in precision and "speed_vs_default" in combined
    assert json.loads(path.read_text())["rows"][1]["error"] == again["error"]
    table = "\n".join(variants.variants_markdown(result))
    assert "| 2 | default, compiled again | {} | failed: RuntimeError: INTERNAL" in table


def test_a_second_models_rows_are_compared_with_that_models_own_default(tmp_path, monkeypatch):
    # The full list's second model is the ResNet ("resnet default", its reference); here the CNN
    # stands in for it under a reference name of its own: the rows are keyed by (R, model)
    # whatever the model, and the CNN's two programs compile in a fraction of the ResNet's time.
    variants = load_script(SCRIPT.parent / "gpu_variants.py", "cljax_gpu_variants")
    monkeypatch.setattr(variants, "REFERENCES", ("default", "cnn default"))
    smoke = load_gpu_check().SMOKE_SIZE
    size = {k: v for k, v in smoke.items() if k != "mlp_hidden"}  # the first row: the MLP
    small = {"model": "cnn"}
    # the MLP at the smoke's width (the program test_a_variant_that_fails... compiled: the cache has it)
    monkeypatch.setattr(variants, "variant_list", lambda smoke_, which="all": [
        ("default", 2, {"mlp_hidden": smoke["mlp_hidden"]}), ("cnn default", 2, small),
        ("cnn conv other", 2, {**small, "conv_impl": variants.OTHER})])
    result = variants.measure_variants(str(FASHION_DIR), True, size, tmp_path / "variants.json", rounds=1)
    mlp, cnn, other = result["rows"]
    assert "speed_vs_default" not in mlp and "speed_vs_default" not in cnn and "error" not in other
    assert other["lowering"]["conv"] == variants.the_other("conv_impl") != cnn["lowering"]["conv"]
    # against the CNN's default, not the MLP's (whose weights have other shapes): a lowering, rounding only
    assert other["speed_vs_default"] > 0 and other["max_weight_diff_relative_to_max_weight"] < 1e-3
    table = "\n".join(variants.variants_markdown(result))
    assert "| 2 | cnn default |" in table and table.count("| 1.00x |") == 2


def test_the_gpu_variants_put_each_r_default_first_and_every_setting_is_a_valid_config():
    """The full lists (never run on the CPU): each R's default runs before the rows compared with
    it, no row runs twice, the defaults at the goals' sizes lead, and every row's settings make a
    valid config (a misspelt setting would only show on the GPU)."""
    from cljax.config import Config

    variants = load_script(SCRIPT.parent / "gpu_variants.py", "cljax_gpu_variants")
    for which in ("all", "deterministic"):
        rows = variants.variant_list(False, which)
        assert len({(name, R) for name, R, _ in rows}) == len(rows), which
        seen = set()
        for name, R, settings in rows:  # each model's rows after its own reference at that R
            assert name in variants.REFERENCES or (R, settings.get("model")) in seen, (which, name, R)
            seen.add((R, settings.get("model")))
            settings = {k: variants.the_other(k) if v == variants.OTHER else v for k, v in settings.items()
                        if k != variants.RECOMPILE}
            Config.from_flat(dataset="fashion_mnist", n_repeats=R, **settings).validate()
    rows = variants.variant_list(False)
    # first what the follow-up reads (the defaults at the goals' sizes, the compile-to-compile check,
    # the lowering near its threshold), then what no GPU session has timed: the pairing at the goals'
    # size, unrolling at R = 1, the ResNet
    assert [(n, R) for n, R, _ in rows[:10]] == [("default", 32), ("default", 128), ("default, compiled again", 32),
                                                 ("conv fused-im2col", 128), ("learner/expert other", 128),
                                                 ("default", 1), ("scan unroll 4", 1), ("scan unroll 16", 1),
                                                 ("resnet default", 32), ("resnet conv other", 32)]
    assert rows[4][2] == {"learner_expert": variants.OTHER}
    assert rows[9][2] == {"model": "resnet", "conv_impl": variants.OTHER}  # the ResNet's lax against its im2col
    assert {(n, R) for n, R, _ in rows} >= {("conv fused", 128), ("conv fused", 32)}
    # the other settings and lowerings at R = 128 run before the other R = 32 rows (where the time may end)
    first_at_32 = next(i for i, (n, R, s) in enumerate(rows)
                       if R == 32 and n not in ("default", "default, compiled again") and "model" not in s)
    before = [s for _, R, s in rows[:first_at_32] if R == 128]
    assert {s.get("conv_impl") for s in before} >= {"fused-im2col", "fused", variants.OTHER}
    assert {"matmul_precision": "default"} in before and {"compute_dtype": "bfloat16"} in before


def test_a_second_call_can_time_a_candidate_lowering_and_precision_as_a_user_would_run_it():
    """--conv-impl / --matmul-precision reach the stages that time or run the task program as a
    user would, and no other; without them no stage gets either flag."""
    gpu_check = load_gpu_check()
    args = gpu_check.parse_args(["--stages", "profile", "throughput_large", "--conv-impl", "fused",
                                 "--matmul-precision", "default"])
    commands = gpu_check.stage_commands(args)
    for name in ("profile", "throughput", "throughput_large", "fashion", "lop"):
        command = " ".join(commands[name])
        assert "--conv-impl fused" in command and "--matmul-precision default" in command, name
    for name in ("env", "tests", "variants", "deterministic"):
        assert "--conv-impl" not in commands[name] and "--matmul-precision" not in commands[name], name
    plain = gpu_check.stage_commands(gpu_check.parse_args([]))
    assert not any("--conv-impl" in c or "--matmul-precision" in c for c in plain.values())
    # the scripts take the flags (parsed, not run)
    throughput = load_script(SCRIPT.parent / "throughput.py", "cljax_throughput")
    t_args = throughput.parse_args(["--conv-impl", "fused", "--matmul-precision", "default"])
    assert throughput.cljax_settings(t_args) == {"conv_impl": "fused", "matmul_precision": "default"}
    assert throughput.cljax_settings(throughput.parse_args([])) == {}
    profile_task = load_script(SCRIPT.parent / "profile_task.py", "cljax_profile_task")
    p_args = profile_task.parse_args(["--conv-impl", "fused", "--matmul-precision", "high"])
    assert (p_args.conv_impl, p_args.matmul_precision) == ("fused", "high")


def test_the_full_checks_stage_commands_parse_in_the_scripts_they_call(tmp_path):
    """The full mode's commands never run on the CPU (too large for it): each parses in the script
    it calls, with the sizes docs/benchmark.md states, and every test it names exists. A misspelt
    flag or test would otherwise first show on the GPU, in its one session."""
    from cljax.settings import Parser, add_run_flags, add_settings_flags, config_from_args

    gpu_check = load_gpu_check()
    commands = gpu_check.stage_commands(gpu_check.parse_args(["--out", str(tmp_path), "--fashion-dir", str(FASHION_DIR)]))
    throughput = load_script(SCRIPT.parent / "throughput.py", "cljax_throughput")
    for name, repeats, processes in (("throughput", [1, 32], None), ("throughput_large", [128, 512], [])):
        args = throughput.parse_args(commands[name][2:])
        assert (args.repeats, args.rounds, args.no_alternatives, args.no_experiment) == (repeats, 3, True, True)
        assert args.torch_processes == processes  # the process peer (R-independent) is timed once, in the first
    tests = commands["tests"]  # the full stage's tests run in pytest-xdist workers, a file to a worker
    assert tests[tests.index("-n") + 1] == str(gpu_check.TEST_WORKERS) and "loadfile" in tests
    assert "--maxfail=1" in tests and tests[tests.index("pytest_failures_now") - 1] == "-p"  # -x; tracebacks kept
    # a second call: the whole suite, every failure, more workers
    whole = gpu_check.stage_commands(gpu_check.parse_args(["--out", str(tmp_path), "--tests", "all", "--maxfail", "50",
                                                           "--test-workers", "14"]))["tests"]
    assert whole[-1] == "tests" and "--maxfail=50" in whole and whole[whole.index("-n") + 1] == "14"
    profile = load_script(SCRIPT.parent / "profile_task.py", "cljax_profile_task").parse_args(commands["profile"][2:])
    assert (profile.repeats, profile.steps, profile.calls) == (128, 50, 3)
    configs = {}
    for name in ("fashion", "lop"):
        argv = commands[name][commands[name].index("run") + 1:]
        parser = Parser(prog="cljax run")
        add_settings_flags(parser, argv)
        add_run_flags(parser)
        configs[name] = config_from_args(parser.parse_args(argv)).validate()
    assert (configs["fashion"].num_tasks, configs["fashion"].n_repeats, configs["fashion"].dataset) == (5, 32, "fashion_mnist")
    lop = configs["lop"]
    assert (lop.num_tasks, lop.n_repeats, lop.batch_size, lop.epochs, lop.steps_per_task) == (2, 32, 100, 250, 3000)
    root = SCRIPT.parents[1]
    stage = load_tests_stage()
    for node in stage.GPU_TESTS + stage.GPU_TESTS_REST:
        path, _, test = node.partition("::")
        assert not test or f"def {test}(" in (root / path).read_text(), node


def goals_report(variants: list[tuple[str, int, dict, dict]], cljax: dict[int, tuple[float, float | None]]) -> dict:
    """A check.json report with variant rows (name, R, settings, figures) and throughput rows
    (R -> samples/s, ratio to the torch.func peer), as the stages write them."""
    rows = [{"variant": name, "repeats": R, "settings": settings, "run_to_run_max_diff": 0.0,
             "max_weight_diff_relative_to_max_weight": 0.0, "max_train_acc_diff": 0.01, **figures}
            for name, R, settings, figures in variants]
    throughput = [{"impl": "cljax", "repeats": R, "samples_per_s": sps,
                   "ratio_vs_peer": {"torch_vmap": ratio} if ratio else {}} for R, (sps, ratio) in cljax.items()]
    return {"stages": {"tests": {"result": {"tests": 40, "failures": 0, "errors": 0, "failed": []}},
                       "variants": {"result": {"rows": rows}},
                       "throughput": {"result": {"rows": [r for r in throughput if r["repeats"] < 128]}},
                       "throughput_large": {"result": {"rows": [r for r in throughput if r["repeats"] >= 128]}}}}


def test_the_summary_states_the_goals_and_proposes_one_second_call_the_script_accepts():
    """The second call the summary proposes: the fastest R = 128 variant the check's flags can
    select, when at least 5% faster (never bfloat16 or another precision, options by design); else
    the deterministic stage when the default's bits moved; else the other tests. Each proposal
    parses as the script's arguments."""
    gpu_check = load_gpu_check()
    goals = load_script(SCRIPT.parent / "gpu_check_goals.py", "cljax_gpu_check_goals")
    defaults = [("default", 32, {}, {}), ("default", 128, {}, {}), ("default, compiled again", 32, {}, {})]
    speeds = {32: (3.4e6, 10.1), 128: (4.1e6, None), 512: (11.2e6, None)}
    fused = goals_report(defaults + [("precision default", 128, {"matmul_precision": "default"}, {"speed_vs_default": 1.2}),
                                     ("conv fused", 128, {"conv_impl": "fused"}, {"speed_vs_default": 1.5}),
                                     ("bfloat16", 128, {"compute_dtype": "bfloat16"}, {"speed_vs_default": 1.9}),
                                     ("conv fused", 32, {"conv_impl": "fused"}, {"speed_vs_default": 2.5})], speeds)
    args, why = goals.next_call(fused)
    assert args == "--stages profile throughput_large --conv-impl fused" and "1.50x" in why
    parsed = gpu_check.parse_args(args.split())
    assert (parsed.stages, parsed.conv_impl) == (["profile", "throughput_large"], "fused")
    lines = "\n".join(goals.goals_markdown(fused))
    assert "10M samples/s at R >= 128: **met**, 11,200,000 at R = 512" in lines
    assert "25x the torch.func vmap peer at R = 32: **not met**, 10.1x" in lines
    assert "bfloat16 at R = 128 1.90x" in lines and "GPU-relevant tests: 40 run, 0 failed" in lines

    slow = goals_report(defaults + [("conv fused", 128, {"conv_impl": "fused"}, {"speed_vs_default": 1.04}),
                                    ("precision default", 128, {"matmul_precision": "default"},
                                     {"speed_vs_default": 1.38})],  # reported, not proposed: it changes numbers
                        {128: (4.1e6, None)})
    assert goals.next_call(slow)[0] == goals.REST_TESTS_CALL
    assert "10M samples/s at R >= 128: **not met**, 4,100,000 at R = 128 (throughput_large)" in "\n".join(
        goals.goals_markdown(slow))
    slow["stages"]["throughput_large"]["result"]["partial"] = "medians of 1 of 3 rounds"  # a stage cut short
    assert ("4,100,000 at R = 128 (throughput_large; partial figures: medians of 1 of 3 rounds)"
            in "\n".join(goals.goals_markdown(slow)))
    assert "torch.func vmap peer at R = 32: not measured" in "\n".join(goals.goals_markdown(slow))
    parsed = gpu_check.parse_args(goals.REST_TESTS_CALL.split())
    assert gpu_check.tests_to_run(parsed) == load_tests_stage().GPU_TESTS_REST and parsed.limit == {"tests": 180.0}

    for moved in ({"variant": "default", "repeats": 128, "run_to_run_max_diff": 3e-7},
                  {"variant": "default, compiled again", "repeats": 32, "max_weight_diff_relative_to_max_weight": 1e-6}):
        report = goals_report(defaults, {})
        next(r for r in report["stages"]["variants"]["result"]["rows"]
             if (r["variant"], r["repeats"]) == (moved["variant"], moved["repeats"])).update(moved)
        args, why = goals.next_call(report)
        assert args == "--stages deterministic" and f"at R = {moved['repeats']}" in why
        assert gpu_check.parse_args(args.split()).stages == ["deterministic"]
