"""The shape of the package: registries with their own params, flags generated from them,
resume across upgrades, models with state and other image shapes, extensions from outside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cljax import results
from cljax.cli import main as cli_main
from cljax.config import Config
from cljax.errors import CljaxError
from cljax.experiment import run_experiment
from cljax.registry import RULES, load_plugins
from tests.conftest import small_config

PLUGIN = Path(__file__).parent / "plugins" / "toy_extension.py"
TINY = dict(num_tasks=2, n_repeats=2, n_train_per_class=40, n_test_per_class=10, n_subsamples=8, epochs=1,
            batch_size=20, log_frequency=2)


def test_flat_settings_round_trip_and_reach_only_the_entries_in_use(tmp_path):
    config = small_config(tmp_path, algorithm="RL", rl_entropy=0.05, use_replay=True, replay_size=64,
                          sp_lambda=0.5)  # sp_lambda: shrink+perturb is off, so it is ignored
    assert config.rule_params.entropy == 0.05
    assert config.option("replay").size == 64 and config.option("shrink_perturb") is None
    flat = config.to_dict()
    assert "sp_lambda" not in flat and flat["use_replay"] is True and flat["add_plasticity"] is False
    assert flat["lr"] == RULES["RL"].extra["default_lr"]
    assert Config.from_flat(flat) == config
    assert config.algorithm_name == "RL_replay_T3"
    with pytest.raises(CljaxError, match="unknown setting"):
        Config.from_flat(flat, not_a_setting=1)
    with pytest.raises(CljaxError, match="--rl-entropy must be at least 0.0"):
        small_config(tmp_path, algorithm="RL", rl_entropy=-1.0).validate()


def test_help_documents_every_flag_with_its_default_and_old_names_still_parse(capsys):
    with pytest.raises(SystemExit):
        cli_main(["run", "--help"])
    text = capsys.readouterr().out
    for flag in ("--rl-entropy", "--rl-reward", "--bio-policy", "--use-replay", "--replay-size", "--add-plasticity",
                 "--shrink-perturb", "--sp-lambda", "--use-ul", "--ul-kind", "--synthetic-classes", "--synthetic-size",
                 "--mlp-hidden", "--resnet-width", "--conv-impl", "--plugin"):
        assert flag in text, flag
    assert "[Bio, RL]" in text  # the shared --rl-reward names both users (sorted)


def _rewrite_record(algo_dir: Path, edit):
    path = algo_dir / "run.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def test_resume_accepts_a_record_without_newer_fields_and_refuses_a_real_change(tmp_path):
    config = small_config(tmp_path, dataset="synthetic", synthetic_classes=6, **TINY)
    run = run_experiment(config, progress=False)
    # A run.json written before schema 2: no schema, no conv_impl, no synthetic size/channels.
    def as_old(record):
        record.pop("schema")
        for name in ("conv_impl", "synthetic_size", "synthetic_channels"):
            record["config"].pop(name)
    _rewrite_record(run.algo_dir, as_old)
    again = run_experiment(config, progress=False)
    assert again.already_finished and len(again.summary) == 2
    # Another spelling of the same data folder and another eval batch size are not changes.
    same = Config.from_flat({**config.to_dict(), "eval_batch_size": 5})
    assert run_experiment(same, progress=False).already_finished
    changed = Config.from_flat({**config.to_dict(), "lr": 0.2})
    with pytest.raises(CljaxError, match=r"other settings \(lr\)"):
        run_experiment(changed, progress=False)


def test_a_bio_run_recorded_before_its_pool_routing_was_corrected_is_not_resumed(tmp_path):
    config = small_config(tmp_path, dataset="synthetic", synthetic_classes=6, algorithm="Bio", conv_impl="im2col",
                          **TINY)
    run = run_experiment(config, progress=False)
    _rewrite_record(run.algo_dir, lambda record: record.update(schema=2))
    assert run_experiment(config, progress=False).already_finished  # a finished run is left as it is
    task1 = results.task_dirs(run.algo_dir)[1]
    for f in task1.iterdir():
        f.unlink()
    task1.rmdir()
    record = (run.algo_dir / "run.json").read_bytes()
    # (No cljax that ran the older rule can write task_001 again: none had --repair. It said "its
    # remaining tasks would follow another rule ... Finish it with the cljax it started with".)
    with pytest.raises(CljaxError, match=r"older cljax, and its Bio rule, in the CNN's im2col lowering, sent the error "
                                         r"through the max-pool winners of the feedback weights.*: this cljax would "
                                         r"write its damaged or missing task_001 again by the corrected rule, not the "
                                         r"one its other tasks followed. Restore task_001 from a copy, pass "
                                         r"--overwrite"):
        run_experiment(config, progress=False)
    assert (run.algo_dir / "run.json").read_bytes() == record and len(results.task_dirs(run.algo_dir)) == 1

    from cljax.code_changes import changed_since

    old = {"schema": 2, "config": {"algorithm": "Bio", "model": "cnn"}, "split": None}
    assert "records no lowering" in changed_since(old)
    for unaffected in ({"schema": 3}, {"config": {"algorithm": "SL"}}, {"config": {"algorithm": "Bio", "model": "mlp"}},
                       {"split": {"lowering": {"conv": "lax"}}}, {"split": {"lowering": {"conv": "fused"}}}):
        assert changed_since({**old, **unaffected}) is None, unaffected
    # schema 4: continual backprop ranks units by their age-corrected utility
    cbp = {"schema": 3, "config": {"algorithm": "SL", "use_cbp": True}, "split": None}
    assert "not corrected for their age" in changed_since(cbp)
    assert changed_since({**cbp, "schema": 4}) is None and changed_since({**cbp, "config": {"use_cbp": False}}) is None
    # schema 4: the ResNet's BatchNorm leaves weight-0 replay slots out; shrink+perturb keeps its scales' size
    resnet = {"schema": 3, "config": {"model": "resnet", "use_replay": True}, "split": None}
    assert "empty slots" in changed_since(resnet)
    assert "BatchNorm scale" in changed_since({**resnet, "config": {"model": "resnet", "add_plasticity": True}})
    for unaffected in ({"model": "cnn", "use_replay": True, "add_plasticity": True},
                       {"model": "resnet", "add_plasticity": True, "sp_noise": "gaussian"}):
        assert changed_since({**resnet, "config": unaffected}) is None, unaffected


@pytest.mark.parametrize("model,extra", [("mlp", dict(mlp_hidden=32)), ("resnet", dict(resnet_width=8, resnet_blocks=1))])
def test_other_models_run_end_to_end_with_every_option(tmp_path, model, extra):
    layer = "dense1" if model == "mlp" else None
    options = dict(use_replay=True, replay_size=20, add_plasticity=True, use_ul=layer is not None,
                   **({"ul_layer": layer} if layer else {}))
    config = small_config(tmp_path, dataset="synthetic", synthetic_classes=6, model=model, **TINY, **extra, **options)
    run = run_experiment(config, progress=False)
    dirs = results.task_dirs(run.algo_dir)
    assert len(dirs) == 2
    meta = results.load_metadata(dirs[1])
    assert meta["lowering"]["conv"] in ("im2col", "lax") and meta["lowering"]["repeats"] in ("loop", "vmap")
    acc = results.load_metrics(dirs[1])["test_acc"]
    assert acc.shape == (2, 2, 2) and np.isfinite(acc).all()
    state = results.flatten_params(results.load_model_state(dirs[1]))
    # The planner's byte figures are the files' sizes, model_state.npy included.
    from cljax.budget import Budget
    from cljax.budget_disk import disk_files_per_task
    from cljax.program import build_task_program

    budget = Budget.of(config, build_task_program(config, (28, 28)), (28, 28))
    planned = disk_files_per_task(budget, np.asarray(meta["task_class_pairs"]), [f"synthetic_{c}" for c in range(6)])
    for name, size in planned.items():
        if name.endswith(".npy"):
            assert (dirs[1] / name).stat().st_size == size, name
    # metadata.json and initial/ (with the ResNet's initial model_state.npy) are estimated: covered, within 10%
    written = (dirs[1] / "metadata.json").stat().st_size
    assert written <= planned["metadata.json"] <= 1.1 * written
    from cljax.budget_disk import disk_run_files

    initial = sum(f.stat().st_size for f in (run.algo_dir / "initial").iterdir())
    assert initial <= disk_run_files(budget)["initial/"] <= initial + 1024
    assert ("model_state.npy" in planned) == (model == "resnet")
    if model == "resnet":  # BatchNorm statistics are saved with the weights, and they moved in training
        assert state and all(v.shape[:2] == (2, 2) for v in state.values())
        assert any(np.abs(v).sum() > 0 for k, v in state.items() if k.endswith("mean"))
    else:
        assert state == {}


def test_bio_on_a_batchnorm_model_is_one_clear_error(tmp_path):
    config = small_config(tmp_path, dataset="synthetic", synthetic_classes=6, model="resnet", algorithm="Bio", **TINY)
    with pytest.raises(CljaxError, match="Bio needs a model without mutable state"):
        run_experiment(config, progress=False)


@pytest.mark.parametrize("channels", [3, 2])  # RGB, and any other count --synthetic-channels' help promises
def test_a_32x32_multi_channel_dataset_runs_end_to_end(tmp_path, channels):
    config = small_config(tmp_path, dataset="synthetic", synthetic_classes=6, synthetic_size=32,
                          synthetic_channels=channels, **TINY)
    run = run_experiment(config, progress=False)
    d = results.task_dirs(run.algo_dir)[-1]
    assert results.load_weights(d)["conv1"]["kernel"].shape[-2:] == (channels, 16)  # its input channels
    assert results.load_representations(d).shape == (2, 2, 2, 8, 64)


def test_a_rule_and_a_model_from_a_plugin_file_run_without_touching_cljax(tmp_path):
    load_plugins([str(PLUGIN)])
    config = small_config(tmp_path, dataset="synthetic", synthetic_classes=6, algorithm="ToySign", model="toy_linear",
                          toysign_scale=0.5, toy_width=4, **TINY)
    assert config.rule_params.scale == 0.5 and config.model_params.width == 4
    run = run_experiment(config, progress=False)
    d = results.task_dirs(run.algo_dir)[-1]
    weights = results.load_weights(d)
    assert weights["dense1"]["kernel"].shape == (2, 2, 784, 4)
    # signSGD: every weight moved by lr * scale per step (or not at all where the gradient is 0)
    first = results.load_weights(results.task_dirs(run.algo_dir)[0])["head"]["kernel"]
    assert np.isfinite(first).all()
    rc = cli_main(["run", "--plugin", str(PLUGIN), "--dataset", "synthetic", "--synthetic-classes", "6",
                   "--algorithm", "ToySign", "--toysign-scale", "0.5", "--model", "toy_linear", "--toy-width", "4",
                   "--results-dir", str(tmp_path / "cli"), "--no-progress", f"--lr={config.lr}",  # the program above:
                   *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]])  # loaded, not compiled again
    assert rc == 0
    assert (tmp_path / "cli" / "synthetic" / "ToySign_T2" / "task_001").is_dir()


def test_the_option_order_does_not_depend_on_which_module_was_imported_first():
    """Options apply in registry order and their tags name the run folder: importing one
    option's module before the others (as a test, a notebook or a plugin may) must not change
    either, or a resume in another process would not find its own run."""
    import importlib
    import subprocess
    import sys

    from cljax.config import Config
    from cljax.registry import OPTIONS

    importlib.import_module("cljax.options.ul")
    assert OPTIONS.names() == sorted(OPTIONS.names()) and {"cbp", "replay", "shrink_perturb", "ul"} <= set(OPTIONS.names())
    flags = dict(use_cbp=True, use_replay=True, add_plasticity=True, use_ul=True, num_tasks=5)
    name = Config.from_flat(**flags).algorithm_name
    code = ("import cljax.options.ul, cljax.options.shrink_perturb; from cljax.config import Config; "
            f"print(Config.from_flat(**{flags!r}).algorithm_name)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert name == other == "SL_cbp_replay_sp_ul_T5"


def test_a_shrink_perturb_run_from_before_start_weights_is_not_resumed(tmp_path):
    # Its folders measured start_test_acc before shrink+perturb acted; a resume by today's code
    # measured it after, and the run held both meanings without a word (same schema).
    config = small_config(tmp_path, dataset="synthetic", synthetic_classes=6, add_plasticity=True,
                          **{**TINY, "num_tasks": 3})
    run = run_experiment(config, progress=False)
    for task in results.task_dirs(run.algo_dir):  # as a cljax before 2026-12-01 wrote them
        meta = json.loads((task / "metadata.json").read_text())
        for key in ("files", "shapes"):
            meta[key].pop("start_weights", None), meta[key].pop("start_weights.npy", None)
        (task / "metadata.json").write_text(json.dumps(meta))
        (task / "start_weights.npy").unlink()
    (run.algo_dir / "verified.json").unlink(missing_ok=True)
    assert run_experiment(config, progress=False).already_finished  # a finished run is left as it is
    shutil.rmtree(results.task_dirs(run.algo_dir)[2])
    with pytest.raises(CljaxError, match=r"older cljax, and its task-start accuracy and loss \(start_test_acc, "
                                         r"start_test_loss\) were measured before shrink\+perturb acted"):
        run_experiment(config, progress=False)
    # Its first folder damaged, the next one tells: --repair would have finished it with today's code.
    first_meta = results.task_dirs(run.algo_dir)[0] / "metadata.json"
    kept = first_meta.read_bytes()
    first_meta.write_text("{damaged")
    with pytest.raises(CljaxError, match=r"older cljax, and its task-start accuracy"):
        run_experiment(config, progress=False, repair=True)
    first_meta.write_bytes(kept)
    # With other settings too, this is what it says first: passing the recorded values led only here.
    with pytest.raises(CljaxError, match=r"older cljax, and its task-start accuracy"):
        run_experiment(Config.from_flat({**config.to_dict(), "lr": 0.3}), progress=False)
    mode_step = {"schema": 5, "config": {"add_plasticity": True, "sp_mode": "step"}}
    from cljax.code_changes import changed_since

    assert changed_since(mode_step, run.algo_dir) is None  # no task-start hook in step mode


def test_a_lost_start_weights_of_today_s_run_is_damage_for_repair_not_an_older_cljax(tmp_path):
    config = small_config(tmp_path, dataset="synthetic", synthetic_classes=6, add_plasticity=True,
                          **{**TINY, "num_tasks": 3})
    run = run_experiment(config, progress=False)
    shutil.rmtree(results.task_dirs(run.algo_dir)[2])
    (results.task_dirs(run.algo_dir)[0] / "start_weights.npy").unlink()
    with pytest.raises(CljaxError, match=r"start_weights.npy is missing.*pass --repair"):
        run_experiment(config, progress=False)
