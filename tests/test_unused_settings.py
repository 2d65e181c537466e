"""A flag the run does not use is said, not silently dropped: a warning for run and plan, and
an error for a sweep grid that no run uses (cljax/settings.py: unused_settings)."""

import pytest

from cljax.cli import main
from cljax.config import Config
from cljax.errors import CljaxError
from cljax.settings import flat_defaults, unused_settings
from cljax.sweep import check_grid_used, expand, run_settings

PLAN = ["plan", "--dataset", "synthetic"]


def test_each_kind_of_unused_setting_is_named_with_why():
    why = unused_settings({**flat_defaults(), "sp_lambda": 0.5, "mlp_hidden": 32, "rl_entropy": 0.1,
                           "head_reset_to": "init", "use_cbp": True, "cbp_rate": 0.01})
    assert why["sp_lambda"] == ("it is a setting of option shrink_perturb, which is off (--add-plasticity or "
                                "--shrink-perturb turns it on)")
    assert why["mlp_hidden"] == "it is a setting of model mlp, and this run's --model is cnn"
    assert why["rl_entropy"] == "it is a setting of rule RL, and this run's --algorithm is SL"
    assert why["head_reset_to"] == "it acts only with --head reset"
    assert "cbp_rate" not in why and "lr" not in why and "use_cbp" not in why  # used: the option is on
    used = unused_settings({**flat_defaults(), "head": "reset", "model": "mlp", "add_plasticity": True})
    assert not {"head_reset_to", "mlp_hidden", "sp_lambda"} & set(used)
    assert set(used) < set(flat_defaults())  # every name it gives is a setting
    # Bio's epsilon acts only under its egreedy policy (a sweep over it trained one run under many names).
    bio = {**flat_defaults(), "algorithm": "Bio", "bio_epsilon": 0.3}
    assert unused_settings(bio)["bio_epsilon"] == "it acts only with --bio-policy egreedy"
    assert "bio_epsilon" not in unused_settings({**bio, "bio_policy": "egreedy", "out_dim": 2})
    # With one output the action never matters (docs/rules.md): both were taken without a word.
    one_output = unused_settings({**bio, "bio_policy": "egreedy"})
    assert one_output["bio_epsilon"] == one_output["bio_policy"] == (
        "with --out-dim 1 Bio's update does not depend on the action, so not on how it is chosen (--out-dim 2 uses it)")
    # Another rule's setting is that first, not "acts only with --bio-policy egreedy" under egreedy.
    assert unused_settings({**flat_defaults(), "bio_policy": "egreedy", "bio_epsilon": 0.2})["bio_epsilon"] == (
        "it is a setting of rule Bio, and this run's --algorithm is SL")


def test_plan_warns_once_per_flag_given_that_the_run_does_not_use(capsys):
    assert main([*PLAN, "--sp-lambda", "0.5", "--model", "cnn", "--mlp-hidden", "32", "--head-reset-to", "init"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")] == [
        "warning: --head-reset-to init has no effect in this run: it acts only with --head reset.",
        "warning: --mlp-hidden 32 has no effect in this run: it is a setting of model mlp, and this run's --model is cnn.",
        "warning: --sp-lambda 0.5 has no effect in this run: it is a setting of option shrink_perturb, which is off "
        "(--add-plasticity or --shrink-perturb turns it on)."]


@pytest.mark.parametrize("flags, reason", [
    (["--use-redo", "--redo-every", "13"], "its first reset comes after step 13 (--redo-every), and the run has 12 steps "
                                           "(3 task(s) x 4)"),
    (["--use-cbp", "--cbp-maturity", "12"], "a unit may be replaced once it is 13 steps old (--cbp-maturity 12), and the "
                                            "run has 12 steps (3 task(s) x 4)"),
    (["--use-cbp", "--cbp-rate", "0"], "--cbp-rate 0 replaces no unit"),
    (["--use-l2", "--l2-decay", "0"], "--l2-decay 0 adds nothing to the direction"),
    (["--use-l2-init", "--l2-init-decay", "0"], "--l2-init-decay 0 adds nothing to the direction"),
    (["--add-plasticity", "--sp-lambda", "1", "--sp-sigma", "0"], "--sp-lambda 1 with --sp-sigma 0 is the identity"),
    (["--add-plasticity", "--num-tasks", "1"], "--sp-mode boundary acts as each task after the first begins, and the "
                                               "run has one task"),
    (["--use-ul", "--ul-lr", "0"], "--ul-lr 0 changes no weight"),
    (["--use-replay", "--num-tasks", "1"], "the buffer is filled as a task ends, so a one-task run replays nothing "
                                           "(its images weigh 0)"),
    (["--use-replay", "--num-tasks", "2"], None),
    (["--use-redo", "--redo-every", "12"], None),  # it acts, once
    # CBP: a whole unit of rate x mature units (64 in the CNN's widest layer) is needed before the run ends
    (["--use-cbp", "--cbp-maturity", "11", "--cbp-rate", "0.0157"], None),  # 1.005 units at step 12
    (["--use-cbp", "--cbp-maturity", "11", "--cbp-rate", "0.0156"], "a layer replaces its first unit when --cbp-rate x "
     "its mature units adds up to one, at step 13 in its widest layer (64 units, mature after step 11), and the run has "
     "12 steps (3 task(s) x 4)"),
    (["--use-cbp", "--cbp-maturity", "0"], "a layer replaces its first unit when --cbp-rate x its mature units adds up "
     "to one, at step 53 in its widest layer (64 units, mature after step 0), and the run has 12 steps (3 task(s) x 4)"),
    (["--add-plasticity", "--sp-mode", "step", "--num-tasks", "1"], None),
])
def test_an_option_whose_settings_leave_it_nothing_to_do_in_the_run_is_named(capsys, flags, reason):
    # A ReDo period longer than the run trained the baseline under the name SL_redo_T30, silently.
    tiny = ["--num-tasks", "3", "--n-train-per-class", "20", "--batch-size", "10", "--epochs", "1", "--log-frequency", "2"]
    assert main([*PLAN, *tiny, *flags]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == ([f"warning: {flags[0]} has no effect in this run: {reason}."] if reason else [])


def test_a_setting_the_chosen_model_or_dataset_never_reads_is_named(capsys):
    # --model mlp --conv-impl fused, --dataset synthetic --data-dir X: taken without a word.
    assert main(["plan", "--dataset", "synthetic", "--synthetic-classes", "4", "--num-tasks", "2", "--model", "mlp",
                 "--conv-impl", "fused", "--data-dir", "/nowhere"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")] == [
        "warning: --conv-impl fused has no effect in this run: model mlp does not read it.",
        "warning: --data-dir /nowhere has no effect in this run: dataset synthetic does not read it."]


def test_cbp_judges_the_widths_of_cljaxs_own_models_only(tmp_path, capsys):
    # A plugin model's widths may follow the image's size: 28x28 ones gave a false warning, and one that
    # could not be built at 28x28 lost the --cbp-rate 0 warning too.
    from cljax.models.units import unit_widths
    from cljax.registry import MODELS

    plugin = tmp_path / "wide_plugin.py"
    plugin.write_text(
        "import flax.linen as nn\n"
        "from cljax.models import as_float_images\n"
        "from cljax.models.units import sow_units\n"
        "from cljax.registry import NoParams, register_model\n\n"
        "class Wide(nn.Module):\n"
        "    out_dim: int\n"
        "    def unit_layers(self):\n"
        "        return ((\"hidden\", \"head\"),)\n"
        "    @nn.compact\n"
        "    def __call__(self, images, train: bool = False):\n"
        "        x = as_float_images(images).reshape(images.shape[0], -1)\n"
        "        h = nn.relu(nn.Dense(images.shape[1], name=\"hidden\")(x))\n"
        "        sow_units(self, \"hidden\", h)\n"
        "        return nn.Dense(self.out_dim, name=\"head\")(h), h\n\n"
        "@register_model(\"wide_test\", params=NoParams)\n"
        "def build(params, ctx):\n"
        "    return Wide(out_dim=ctx.out_dim)\n")
    flags = ["--plugin", str(plugin), "--model", "wide_test", "--use-cbp", "--num-tasks", "3", "--n-train-per-class",
             "20", "--batch-size", "10", "--epochs", "1", "--log-frequency", "2"]
    try:
        assert main([*PLAN, *flags, "--cbp-maturity", "0"]) == 0  # 28 units at 28x28 would be inert: not judged
        assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
        assert unit_widths("wide_test", MODELS["wide_test"].params(), 1) is None
        assert main([*PLAN, *flags, "--cbp-rate", "0"]) == 0
        assert "warning: --use-cbp has no effect in this run: --cbp-rate 0 replaces no unit." in capsys.readouterr().err
    finally:
        MODELS._entries.pop("wide_test", None)  # (other tests list the models)


@pytest.mark.parametrize("flags", [["--use-cbp"], ["--use-redo", "--redo-every", "13"]])
def test_a_unit_option_on_a_model_without_unit_layers_is_refused_in_one_line_with_no_warning_first(capsys, flags):
    # A warning that its first reset came after the run's steps came before the refusal.
    tiny = ["--num-tasks", "3", "--n-train-per-class", "20", "--batch-size", "10", "--epochs", "1", "--log-frequency", "2"]
    assert main([*PLAN, *tiny, *flags, "--model", "resnet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {flags[0]} resets hidden units"), err


@pytest.mark.parametrize("extra", [
    ["--shrink-perturb", "--sp-lambda", "0.5"],  # used
    ["--sp-lambda", "0.99"],  # its default: nothing was asked of it
    ["--preset", "lop-imagenet"],  # the preset's own defaults are not flags given
    ["--model", "nope", "--mlp-hidden", "32"],  # no run: the run's own check says why, in one line
])
def test_no_warning_for_what_the_run_uses_a_default_or_a_preset(capsys, extra):
    from cljax.settings import Parser, add_settings_flags, warn_unused

    parser = Parser()
    add_settings_flags(parser, extra)
    warn_unused(parser, parser.parse_args(extra))
    assert capsys.readouterr().err == ""


def test_a_sweep_grid_that_no_run_uses_or_that_repeats_a_run_is_refused_and_one_some_runs_use_is_not(tmp_path, capsys):
    base = {**flat_defaults(), "dataset": "synthetic", "results_dir": str(tmp_path)}

    def check(base, grid, seeds):
        runs = expand(base, grid, seeds)
        check_grid_used(runs, [unused_settings(run_settings(base, run), inert=False) for run in runs])

    with pytest.raises(CljaxError, match=r"--grid sp_lambda=\.\.\.: no run of the sweep uses it \(it is a setting of "
                                         r"option shrink_perturb, which is off"):
        check(base, {"sp_lambda": [0.5, 0.9]}, [0])
    # the cbp runs use cbp_rate, but the two without CBP differ in nothing else: one run trained twice
    with pytest.raises(CljaxError, match=r"^--grid: use_cbp-False_cbp_rate-0\.001_seed-0 and use_cbp-False_cbp_rate-0\.01"
                                         r"_seed-0 would train the same run: they differ only in cbp_rate, which neither "
                                         r"uses \(it is a setting of option cbp, which is off"):
        check(base, {"use_cbp": [True, False], "cbp_rate": [1e-3, 1e-2]}, [0, 1])
    check(base, {"model": ["cnn", "mlp"], "mlp_hidden": [16]}, [0, 1])  # one cnn run per seed: nothing twice
    check(base, {"use_cbp": [True, False], "cbp_rate": [1e-3]}, [0])
    check({**base, "add_plasticity": True}, {"sp_lambda": [0.5, 0.9]}, [0, 1])
    rc = main(["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path), "--grid", "mlp_hidden=16,32",
               "--executor", "local"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--grid mlp_hidden=...: no run of the sweep uses it" in err
    assert not any(tmp_path.iterdir())  # nothing submitted, nothing written


def test_a_sweep_of_an_option_that_would_not_act_warns_and_is_not_refused(tmp_path, capsys, monkeypatch):
    # ReDo on, past the runs' last step, with a grid of lr: refused as "no run uses it ... turn on
    # what it belongs to", though the runs differ in lr and ReDo is on. It is a warning, as for run.
    import cljax.sweep as sweep

    class Submitted(Exception):
        pass

    def executor(*args):
        raise Submitted  # every check before the jobs passed

    monkeypatch.setattr(sweep, "make_executor", executor)
    flags = ["sweep", "--dataset", "synthetic", "--num-tasks", "2", "--epochs", "1", "--redo-every", "100000",
             "--results-dir", str(tmp_path), "--executor", "local", "--grid", "lr=0.1,0.2"]
    for given in (["--grid", "use_redo=true"], ["--use-redo"]):
        with pytest.raises(Submitted):
            main([*flags, *given])
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "warning: --use-redo has no effect in any run of the sweep: its first reset comes after step 100000")


def test_a_sweep_warns_of_a_flag_none_of_its_runs_uses_and_not_of_one_some_use(tmp_path, capsys, monkeypatch):
    import cljax.sweep as sweep

    submitted = []
    monkeypatch.setattr(sweep, "make_executor", lambda *a: object())
    monkeypatch.setattr(sweep, "submit", lambda *a, **k: submitted.append(a) or [])
    rc = main(["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path), "--grid", "use_cbp=true,false",
               "--cbp-rate", "0.01", "--sp-lambda", "0.5", "--executor", "local"])
    err = capsys.readouterr().err
    assert rc == 0 and len(submitted) == 1 and len(submitted[0][0]) == 2
    assert [line for line in err.splitlines() if line.startswith("warning")] == [
        "warning: --sp-lambda 0.5 has no effect in any run of the sweep: it is a setting of option shrink_perturb, "
        "which is off (--add-plasticity or --shrink-perturb turns it on)."]  # --cbp-rate: the use_cbp=true run's


def test_the_settings_a_run_uses_are_its_configs_own():
    """The rule behind it: Config.to_dict holds exactly the settings the run uses, but those that act
    under another's value (applies_when) and those its model or dataset never reads (ignores=),
    which it records as the run was given them."""
    flat = {**flat_defaults(), "model": "mlp", "use_replay": True}
    used = Config.from_flat(flat).to_dict()
    assert set(flat) - set(used) == set(unused_settings(flat)) - {"head_reset_to", "conv_impl"}
    assert "conv_impl" in used and unused_settings(flat)["conv_impl"] == "model mlp does not read it"


def test_a_sweep_s_runs_that_leave_a_flag_unused_for_different_reasons_are_each_said(tmp_path, capsys, monkeypatch):
    # SL's reason alone was given for a Bio run that ignores --bio-policy for another (--out-dim 1).
    import cljax.sweep as sweep

    monkeypatch.setattr(sweep, "make_executor", lambda *a: object())
    monkeypatch.setattr(sweep, "submit", lambda *a, **k: [])
    assert main(["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path), "--grid", "algorithm=SL,Bio",
                 "--bio-policy", "egreedy", "--executor", "local"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: --bio-policy")] == [
        "warning: --bio-policy egreedy has no effect in any run of the sweep: by run, it is a setting of rule Bio, and "
        "this run's --algorithm is SL; with --out-dim 1 Bio's update does not depend on the action, so not on how it "
        "is chosen (--out-dim 2 uses it)."]


def test_a_grid_over_a_setting_that_changes_nothing_in_its_runs_is_said(tmp_path, capsys, monkeypatch):
    # --grid bio_policy=softmax,egreedy at --out-dim 1 trained runs that differ at most by rounding, without a word.
    import cljax.sweep as sweep

    monkeypatch.setattr(sweep, "make_executor", lambda *a: object())
    monkeypatch.setattr(sweep, "submit", lambda *a, **k: [])
    assert main(["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path), "--algorithm", "Bio",
                 "--grid", "bio_policy=softmax,egreedy", "--executor", "local"]) == 0
    assert "warning: --grid bio_policy=...: its values change nothing in any run of the sweep (with --out-dim 1 Bio's " \
           "update does not depend on the action" in capsys.readouterr().err
    assert main(["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path / "two"), "--algorithm", "Bio",
                 "--out-dim", "2", "--grid", "bio_policy=softmax,egreedy", "--executor", "local"]) == 0
    assert "--grid bio_policy" not in capsys.readouterr().err


BEFORE_THE_SPLIT = """
import contextlib, io, json, sys
from pathlib import Path
from jax._src import xla_bridge

import cljax
import cljax.devices.cpu_split as cpu_split
import cljax.settings as settings
from cljax.cli import main
from cljax.config import Config, algo_dir_of, option_switch
from cljax.presets import PRESETS
from cljax.registry import DATASETS, MODELS, OPTIONS, RULES
from cljax.sweep import run_job

tmp = Path(sys.argv[1])


class AtTheSplit(BaseException):  # past cljax's own error handling (a CljaxError, SystemExit)
    pass


seen = []  # the recorded split each walk asked for
def at_the_split(n_repeats, environ=None, recorded=None):
    seen.append(recorded)
    raise AtTheSplit


checked = []
def counted(flat, inert=True):  # each run's settings checks ran (an invalid config skips them)
    checked.append(flat)
    return unused_settings(flat, inert)


unused_settings, settings.unused_settings = settings.unused_settings, counted
cpu_split.configure_cpu_devices = at_the_split  # the run and the job import it when they split


def started(what):
    if xla_bridge.backends_are_initialized():
        sys.exit(f"{what} started JAX's backend before the CPU split")


started("importing cljax.cli and cljax.sweep")
cljax.enable_compilation_cache(str(tmp / "cache"))  # what the cljax command does first
started("enable_compilation_cache")
TINY = dict(num_tasks=2, n_repeats=2, n_train_per_class=8, n_test_per_class=4, n_subsamples=4, batch_size=4, epochs=1,
            log_frequency=2)
every_option = {option_switch(e): True for e in OPTIONS.entries()}
# (the flags of `cljax run`, the settings of a sweep's job), by flat name
cases = [(dict(TINY, algorithm=r, model=m, dataset=d, **options),) * 2 for r in RULES.names() for m in MODELS.names()
         for d in DATASETS.names() for options in ({}, every_option)]
cases += [(dict(preset=p, **options), dict(PRESETS[p], **options)) for p in PRESETS for options in ({}, every_option)]


def argv(flat, results):
    out = ["run", "--results-dir", str(results), "--data-dir", str(tmp / "data")]
    for k, v in flat.items():
        out += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)]
    return out


def walk(what, go, recorded=None):
    seen.clear()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the warnings of unused flags
            go()
        sys.exit(f"{what} did not reach the CPU split")
    except AtTheSplit:
        pass
    started(what)
    if seen != [recorded]:
        sys.exit(f"{what}: the split was asked with recorded={seen}, not {recorded}")


for i, (flat, job) in enumerate(cases):
    before = len(checked)
    walk(f"`cljax {' '.join(argv(flat, 'R'))}`", lambda: main(argv(flat, tmp / f"run{i}")))
    if len(checked) == before:
        sys.exit(f"`cljax {' '.join(argv(flat, 'R'))}`: its settings checks did not run (not a valid run?)")
    # A sweep's job: its own process, given the run's resolved settings.
    config = Config.from_flat(dict(job, results_dir=str(tmp / f"job{i}"), data_dir=str(tmp / "data")))
    walk(f"a sweep job of {job}", lambda: run_job(config.to_dict()))
# A run being resumed reads the split it started on: from run.json, or from its task folders
# when run.json is lost (--repair).
split = {"backend": "cpu", "processes": 1, "devices": 2}
flat = dict(TINY, dataset="synthetic", use_cbp=True)
folder = algo_dir_of(Config.from_flat(dict(flat, results_dir=str(tmp / "resumed"))))
folder.mkdir(parents=True)
(folder / "run.json").write_text(json.dumps({"split": split}))
walk("a resumed run", lambda: main(argv(flat, tmp / "resumed")), split)
walk("a resumed sweep job", lambda: run_job(dict(flat, results_dir=str(tmp / "resumed"))), split)
(folder / "run.json").unlink()
(folder / "task_000").mkdir()
(folder / "task_000" / "metadata.json").write_text(json.dumps(
    {"run_id": "r", "data": "d", "config": flat, "schema": 5, "split": split, "task_index": 0}))
walk("a resumed run without its run.json", lambda: main(argv(flat, tmp / "resumed") + ["--repair"]), split)
"""


def test_nothing_before_the_cpu_split_starts_jaxs_backend(tmp_path):
    # CBP's and ReDo's checks (unit_widths) drew a concrete PRNG key, which started the backend
    # before the run split the CPU into one device per core: every CBP or ReDo run on a CPU ran on
    # one device, unpaired (run.json's split said so), and its numbers were not those of the same
    # run before the check existed. Here everything `cljax run` does before the split (flags,
    # presets, the settings and every entry's checks, the record of a run being resumed), and what a
    # sweep's job does before it, for every registered rule, model and dataset, with no option and
    # with every one, and for every preset. A process of its own: this one's backend started long ago.
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", BEFORE_THE_SPLIT, str(tmp_path)], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:] or "something before the CPU split started JAX's backend"
