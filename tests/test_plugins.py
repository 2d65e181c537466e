"""Extensions from plugin files: a run records the files of the entries it uses and a resume
refuses one that changed; names, flags and tags are taken once; ``cljax analyze --plugin``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cljax.checkpoint import read_run_record
from cljax.errors import CljaxError
from cljax.experiment import run_experiment
from cljax.registry import OPTIONS, Entry, Registry, load_plugins
from cljax.settings import setting_specs
from tests.conftest import small_config

TINY = dict(dataset="synthetic", synthetic_classes=6, num_tasks=3, n_repeats=2, n_train_per_class=16,
            n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=8, log_frequency=2, model="mlp",
            mlp_hidden=32)  # the MLP compiles fastest; a plugin's rule sees any model through the same contract

RULE = '''
import jax
from cljax.losses import nll_and_correct, weighted_mean
from cljax.registry import register_rule
from cljax.rules import Rule


@register_rule("{name}", default_lr=0.05)
def make(params, config, net):
    """plain gradient of the cross-entropy, scaled"""
    def direction(net, p, model_state, rule_state, images, labels, weights, key):
        def loss(q):
            logits, _, state = net.apply(q, model_state, images, True, weights)
            nll, correct = nll_and_correct(logits, labels)
            return weighted_mean(nll, weights), (weighted_mean(correct, weights), state)
        (l, (acc, state)), g = jax.value_and_grad(loss, has_aux=True)(p)
        return jax.tree.map(lambda x: {scale} * x, g), rule_state, state, {{"loss": l, "acc": acc}}
    return Rule(init=lambda p, key: (), direction=direction)
'''


class Stop(Exception):
    pass


def _stop_after_first(t, info):
    raise Stop


def test_a_resume_refuses_a_run_whose_plugin_file_changed_and_takes_it_back_restored(tmp_path):
    plugin = tmp_path / "scaled_rule.py"
    plugin.write_text(RULE.format(name="ScaledPlug", scale=1.0))
    load_plugins([str(plugin)])
    config = small_config(tmp_path, algorithm="ScaledPlug", **TINY)
    with pytest.raises(Stop):
        run_experiment(config, progress=False, on_task_end=_stop_after_first)
    algo_dir = tmp_path / "results" / "synthetic" / "ScaledPlug_T3"
    sources = read_run_record(algo_dir)["sources"]
    assert [k for k, v in sources.items() if not v.get("cljax")] == ["rule ScaledPlug"]
    assert sources["rule ScaledPlug"]["file"] == str(plugin.resolve())
    assert len(sources["rule ScaledPlug"]["sha256"]) == 64
    assert json.loads((algo_dir / "task_000" / "metadata.json").read_text())["plugins"] == sources

    original = plugin.read_text()
    plugin.write_text(original.replace("1.0 * x", "10.0 * x"))
    # In this process the code imported would run, and a new run would record the edited file: refused
    # as such (it said the file changed since the run started, though the old code would run).
    with pytest.raises(CljaxError, match=rf"^plugin file {plugin.resolve()} changed since this process imported it: "
                                         r"what would run is the code imported"):
        run_experiment(config, progress=False)
    with pytest.raises(CljaxError, match="changed since this process imported it"):  # a new run too
        run_experiment(small_config(tmp_path / "other", algorithm="ScaledPlug", **TINY), progress=False)
    assert not (algo_dir / "task_001").exists()  # refused before anything was written
    # a new process imports the edited file: its resume is refused as other code
    proc = _run_in_a_new_process(plugin, "ScaledPlug", {**TINY, "lr": config.lr, "results_dir": config.results_dir})
    assert proc.returncode == 2 and (f"the file of its rule ScaledPlug, {plugin.resolve()}, changed since the run "
                                     f"started. Restore the file") in proc.stderr, proc.stderr[-2000:]
    plugin.write_text(original)
    run = run_experiment(config, progress=False)
    assert run.first_task == 1 and (algo_dir / "task_002" / "metadata.json").is_file()


def _run_in_a_new_process(plugin, algorithm: str, settings: dict) -> subprocess.CompletedProcess:
    """`cljax run --plugin PLUGIN --algorithm ALGORITHM` with ``settings`` as flags (small_config's
    others are TINY's), in a process of its own: it imports the plugin file as it is now."""
    code = (f"import sys; from cljax.cli import main; sys.exit(main(['run', '--plugin', {str(plugin)!r}, "
            f"'--algorithm', {algorithm!r}, *sys.argv[1:]]))")
    flags = [text for k, v in settings.items() for text in (f"--{k.replace('_', '-')}", str(v))]
    return subprocess.run([sys.executable, "-c", code, *flags, "--no-progress"], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])


def test_a_resume_whose_plugin_default_was_edited_is_refused_for_the_file_not_the_setting(tmp_path):
    # The rule's default lr edited in its file: the resume (a new process, as a user's) was refused
    # first for "lr recorded 0.05, now 0.1"; passing --lr 0.05 then brought the file's refusal.
    plugin = tmp_path / "default_rule.py"
    plugin.write_text(RULE.format(name="DefaultPlug", scale=1.0))
    load_plugins([str(plugin)])
    config = small_config(tmp_path, algorithm="DefaultPlug", lr=None, **TINY)
    with pytest.raises(Stop):
        run_experiment(config, progress=False, on_task_end=_stop_after_first)
    plugin.write_text(plugin.read_text().replace("default_lr=0.05", "default_lr=0.1"))
    proc = _run_in_a_new_process(plugin, "DefaultPlug", {**TINY, "results_dir": config.results_dir})
    assert proc.returncode == 2 and "other settings" not in proc.stderr, proc.stderr[-2000:]
    assert (f"the file of its rule DefaultPlug, {plugin.resolve()}, changed since the run started. Restore the "
            f"file") in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def sl_run(tmp_path_factory):
    """A finished run of cljax's own entries (SL, the MLP, synthetic data), T = 3: read, never changed."""
    config = small_config(tmp_path_factory.mktemp("sl"), **TINY)
    return config, run_experiment(config, progress=False)


def test_a_run_of_cljax_entries_records_their_files_in_the_package_and_an_older_record_is_not_compared(sl_run):
    from cljax.sources import check_sources

    config, run = sl_run
    record = read_run_record(run.algo_dir)
    assert sorted(record["sources"]) == ["dataset synthetic", "model mlp", "rule SL"]  # cljax's own files, marked
    assert record["sources"]["rule SL"]["file"] == "cljax/rules/sl.py" and record["sources"]["rule SL"]["cljax"]
    assert record["dataset_meta"]["name"] == "synthetic"  # the loader's meta: where the data came from
    assert record["dataset_meta"]["source"].startswith("generator seed ")
    check_sources(None, config, run.algo_dir)  # a run.json written before sources were recorded
    with pytest.raises(CljaxError, match=r"its rule SL came from /x/mine.py and is now cljax's own"):
        check_sources({"rule SL": {"file": "/x/mine.py", "sha256": "0" * 64}}, config, run.algo_dir)


def test_help_lists_the_registered_rules_and_models_plugins_included(tmp_path):
    plugin = Path(__file__).parent / "plugins" / "toy_extension.py"
    proc = subprocess.run([sys.executable, "-m", "cljax.cli", "run", "--plugin", str(plugin), "--help"],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    text = " ".join(proc.stdout.split())
    assert "the continual learner and the expert: Bio, RL, SL, ToySign (default: SL)" in text
    assert "network architecture: cnn, mlp, resnet, toy_linear (default: cnn)" in text
    # --lr's default, each rule's own: a plugin's too (the text named the built-ins' alone)
    assert "each registered rule's: Bio 0.05, RL 0.1, SL 0.05, ToySign 0.01 (>=0)" in text


def test_analyze_help_lists_the_registered_analyses_a_plugins_included(tmp_path):
    # The plugin was loaded after the flags were parsed, so `--help` (which exits there) never
    # saw it, and the help named no analysis at all.
    plugin = tmp_path / "count_analysis.py"
    plugin.write_text("from cljax.analysis.registry import Analysis, Result, register\n"
                      "register(Analysis('count_tasks', lambda c: 0, lambda n, f: n + 1, lambda n: Result()))\n")
    proc = subprocess.run([sys.executable, "-m", "cljax.cli", "analyze", "--plugin", str(plugin), "--help"],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "analyses, in the order they run: cl, plasticity, curves, run, glue, probe, count_tasks" in text


def test_a_name_is_registered_once_and_a_module_imported_again_replaces_its_own():
    registry = Registry("rule", "cljax.rules")

    def first(params, config, net):
        pass

    def second(params, config, net):
        pass

    second.__module__ = "cljax_plugin_other_1"
    registry.register("Mine")(first)
    registry.register("Mine")(first)  # the same module again (a reload)
    with pytest.raises(CljaxError, match=r"rule 'Mine' is registered twice, by .* \(.*first\) and "
                                         r"cljax_plugin_other_1 \(.*second\): rename one"):
        registry.register("Mine")(second)
    # one file registering one name twice (two functions): the second replaced the first silently
    second.__module__ = first.__module__
    with pytest.raises(CljaxError, match=r"rule 'Mine' is registered twice, by .*first\) and .*second\)"):
        registry.register("Mine")(second)


@pytest.mark.parametrize("kwargs, what", [
    (dict(name="../../escaped"), "name '../../escaped'"), (dict(name="a/b"), "name 'a/b'"),
    (dict(name=""), "name ''"), (dict(name="my rule"), "name 'my rule'"),
    (dict(name="ok", tag="../up"), "tag '../up'"), (dict(name="ok", flag="use me"), "flag 'use me'"),
    (dict(name="ok", prefix="--x y"), "prefix '--x y'")])
def test_an_entry_whose_name_tag_flag_or_prefix_would_make_a_path_or_an_untypable_flag_is_refused(kwargs, what):
    # A dataset named "../../escaped_ds" wrote its run outside --results-dir; a flag "use me" could
    # not be typed.
    registry = Registry("dataset", "cljax.datasets")
    name = kwargs.pop("name")
    with pytest.raises(CljaxError, match=rf"^dataset {name!r}: its {what} must be letters, digits and "):
        registry.register(name, **kwargs)
    registry.register("fine.name-2+x", tag="t_1", flag="use-it", prefix="p_2")  # what the built-ins use


def test_a_plugin_whose_code_raises_in_a_run_is_one_line_with_its_line(tmp_path):
    # An option hook raising inside the compiled step: a traceback before. (In a process of its
    # own: an option registered here would be in every later run's settings of this worker.)
    plugin = tmp_path / "raising.py"
    plugin.write_text("from cljax.options import Option\nfrom cljax.registry import register_option\n\n\n"
                      "def boom(*args):\n    raise ValueError('my hook exploded')\n\n\n"
                      "@register_option('raising_hook', tag='rh', flag='use-rh')\n"
                      "def build(params, config, net):\n    return Option(step_end=boom)\n")
    proc = subprocess.run([sys.executable, "-m", "cljax.cli", "run", "--plugin", str(plugin), "--use-rh",
                           "--results-dir", str(tmp_path / "r"), "--no-progress",
                           *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: plugin file {plugin} raised ValueError at line 6 (my hook exploded): fix "
                                  f"it, or leave it out of --plugin"), proc.stderr


def test_a_plugin_that_reuses_a_builtin_name_is_refused_in_one_line(tmp_path):
    plugin = tmp_path / "shadow.py"
    plugin.write_text(RULE.format(name="SL", scale=1.0))
    proc = subprocess.run([sys.executable, "-m", "cljax.cli", "run", "--plugin", str(plugin), "--help"],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "rule 'SL' is registered twice" in lines[0] and str(plugin.resolve()) in lines[0]


@pytest.mark.parametrize("flag, tag, other, shared", [
    ("use-replay", "mine", "option 'replay' (", "share the flag --use-replay"),
    ("use-mine", "replay", "option 'replay' (", "share the tag 'replay'"),
    ("lr", "mine", "a setting of cljax run", "share the flag --lr")])
def test_an_option_that_reuses_a_flag_or_a_tag_is_refused(monkeypatch, flag, tag, other, shared):
    def make_mine(params, config, net):
        pass

    monkeypatch.setitem(OPTIONS._entries, "mine", Entry(name="mine", build=make_mine, tag=tag, flag=flag))
    with pytest.raises(CljaxError) as refused:
        setting_specs()
    message = str(refused.value)
    assert f"option 'mine' ({Path(__file__).resolve()})" in message and other in message
    assert shared in message and message.endswith(": give one of them its own.")


@pytest.mark.parametrize("other_default, other_type, refused", [(1, int, False), (2, int, True), (1.0, float, True)])
def test_options_may_share_a_flag_only_when_they_declare_it_alike(monkeypatch, other_default, other_type, refused):
    import dataclasses

    from cljax.registry import param

    def make(params, config, net):
        pass

    def params_of(name, default, type_):
        return dataclasses.make_dataclass(name, [("k", type_, param(default, "shared knob", flag="mine-k"))], frozen=True)

    monkeypatch.setitem(OPTIONS._entries, "mine_a", Entry(name="mine_a", build=make, tag="ma", params=params_of("A", 1, int)))
    monkeypatch.setitem(OPTIONS._entries, "mine_b", Entry(name="mine_b", build=make, tag="mb",
                                                          params=params_of("B", other_default, other_type)))
    if not refused:
        assert setting_specs()["mine_k"][5] == ("mine_a", "mine_b")
        return
    with pytest.raises(CljaxError, match=r"--mine-k is declared differently by mine_a and option 'mine_b' \(.*\): "
                                         r"rename one"):
        setting_specs()


def _analyze(algo_dir, out, plugin):
    """`cljax analyze` of ``algo_dir`` into ``out`` with ``plugin``, in a process of its own: a fresh
    process, where no analysis module was imported before the plugin's."""
    return subprocess.run([sys.executable, "-m", "cljax.cli", "analyze", str(algo_dir), "--out", str(out), "--no-glue",
                           "--no-plots", "--plugin", str(plugin)], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)


def _analyze_here(algo_dir, out, plugin, capsys, monkeypatch):
    """The same command in this process (each plugin a file of its own name: a file loads once per
    process), with the registered analyses and the loaded plugin files as they were before it, so
    that its analysis runs only here, not in any later `cljax analyze` of this worker. (rc, stderr)."""
    import cljax.analysis.registry as analysis_registry
    import cljax.registry as cljax_registry
    from tests.run_folder_kit import run_cli

    analysis_registry.registered()  # the built-ins first, as the command registers them
    with monkeypatch.context() as m:
        m.setattr(analysis_registry, "_ANALYSES", dict(analysis_registry._ANALYSES))
        m.setattr(cljax_registry, "_loaded_plugins", dict(cljax_registry._loaded_plugins))
        rc, _, err = run_cli(["analyze", str(algo_dir), "--out", str(out), "--no-glue", "--no-plots",
                              "--plugin", str(plugin)], capsys)
    return rc, err


def test_analyze_loads_a_plugin_analysis_and_writes_its_summary(sl_run, tmp_path, capsys, monkeypatch):
    # In this process but for the built-in replaced (a fresh process is what that case is about):
    # each child paid JAX's import. The run's 3 task folders: each analysis counts 3.
    _, run = sl_run
    plugin = tmp_path / "count_analysis.py"
    plugin.write_text('''
from cljax.analysis.registry import Analysis, Result, register

register(Analysis("count_tasks", init=lambda context: 0, update=lambda n, folder: n + 1,
                  finalize=lambda n: Result(summary={"tasks_seen_by_plugin": n})))
''')
    out = tmp_path / "an"
    rc, err = _analyze_here(run.algo_dir, out, plugin, capsys, monkeypatch)
    assert rc == 0, err
    written = json.loads((out / "summary.json").read_text())
    assert written["tasks_seen_by_plugin"] == 3 and "probe.npz" in written["files"]
    # a file name that is a path, or lacks its suffix (savez adds one: the rename then failed and
    # left temporaries behind): one line, nothing written
    for i, arrays in enumerate(('{"../../escape.npz": {"a": np.zeros(2)}}', '{"cl": {"a": np.zeros(2)}}')):
        plugin = tmp_path / f"odd_{i}.py"
        plugin.write_text("import numpy as np\nfrom cljax.analysis.registry import Analysis, Result, register\n"
                          f"register(Analysis('odd', lambda c: 0, lambda n, f: n, lambda n: Result(arrays={arrays})))\n")
        bad = tmp_path / "bad"
        rc, err = _analyze_here(run.algo_dir, bad, plugin, capsys, monkeypatch)
        assert rc == 2 and err.count("\n") == 1, err
        assert "analysis 'odd' writes a file named" in err and "ending in .npz (nothing was written)" in err
        assert not bad.exists() and not (tmp_path / "escape.npz").exists()
    # a built-in replaced: the plugin imports only the registry (the built-ins were not registered
    # yet, so unregister("probe") failed): in a process of its own, where they are not
    plugin = tmp_path / "replace_probe.py"
    plugin.write_text("from cljax.analysis.registry import Analysis, Result, register, unregister\n"
                      "unregister('probe')\n"
                      "register(Analysis('probe', lambda c: 0, lambda n, f: n + 1, lambda n: Result(summary={'mine': n})))\n")
    mine = tmp_path / "mine"
    proc = _analyze(run.algo_dir, mine, plugin)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((mine / "summary.json").read_text())
    assert summary["mine"] == 3 and "probe.npz" not in summary["files"] and not (mine / "probe.npz").exists()
    for name, finalize, said in (
            # a summary key cljax writes: the plugin is named, not the built-in analysis before it
            ("aaa", "Result(summary={'n_repeats': 5})", "analysis 'aaa' and cljax analyze itself both write the summary "
                                                        "key(s) n_repeats: give the plugin's keys other names"),
            # a finalize that returns a dict, not a Result (an AttributeError's traceback)
            ("dict", "{'summary': {'a': 1}}", "analysis 'dict': its finalize returns dict, not a "
                                              "cljax.analysis.registry.Result of three dicts (summary, arrays, plots): "
                                              "return one")):
        plugin = tmp_path / f"{name}_analysis.py"
        plugin.write_text("from cljax.analysis.registry import Analysis, Result, register\n"
                          f"register(Analysis('{name}', lambda c: 0, lambda n, f: n, lambda n: {finalize}))\n")
        rc, err = _analyze_here(run.algo_dir, bad, plugin, capsys, monkeypatch)
        assert rc == 2 and err == f"error: {said} (nothing was written).\n" and not bad.exists()
    # an exception in its update: the line names the plugin file's own line, as a run's hook's does
    plugin = tmp_path / "raises_analysis.py"
    plugin.write_text("from cljax.analysis.registry import Analysis, Result, register\n"
                      "def update(n, folder):\n"
                      "    return n / 0\n"
                      "register(Analysis('raises', lambda c: 0, update, lambda n: Result()))\n")
    rc, err = _analyze_here(run.algo_dir, bad, plugin, capsys, monkeypatch)
    assert rc == 2 and err == (f"error: analysis 'raises' raised ZeroDivisionError in update (task_000) at line 3 of "
                               f"{plugin}: division by zero: fix its plugin, or leave it out of --plugin (nothing was "
                               f"written).\n") and not bad.exists()


def _class_data(**changes):
    import dataclasses

    import numpy as np

    from cljax.data import ClassData

    rng = np.random.default_rng(0)
    good = ClassData(train_images=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), train_labels=np.arange(12) % 3,
                     test_images=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), test_labels=np.arange(6) % 3,
                     n_classes=3, class_names=("a", "b", "c"), meta={})
    return dataclasses.replace(good, **changes)


@pytest.mark.parametrize("changes, message", [
    (dict(train_images=_class_data().train_images / 255.0), r"gave train images as float64 \(12, 8, 8\): return uint8"),
    (dict(test_images=_class_data().train_images[:6, :7]), r"gave train images of shape \(8, 8\) and test images of "
                                                           r"shape \(7, 8\): both splits"),
    (dict(train_labels=_class_data().train_labels[:-1]), r"gave train labels as int64 \(11,\) for 12 images"),
    (dict(test_labels=_class_data().test_labels + 1), r"gave test labels from 1 to 3 with n_classes = 3"),
    (dict(class_names=("a", "b")), r"gave 2 class names for 3 classes"),
])
def test_a_dataset_loader_that_breaks_the_contract_is_refused_in_one_line(changes, message):
    from cljax.data import check_class_data

    check_class_data(_class_data(), "mine")
    with pytest.raises(CljaxError, match=rf"^dataset 'mine': its loader {message}"):
        check_class_data(_class_data(**changes), "mine")
    with pytest.raises(CljaxError, match=r"returned a tuple, not a cljax.data.ClassData"):
        check_class_data((1, 2), "mine")


def _net(returns):
    import flax.linen as nn
    import jax.numpy as jnp

    from cljax.models import as_float_images, make_net

    class Broken(nn.Module):
        @nn.compact
        def __call__(self, images, train: bool = False):
            x = as_float_images(images, jnp.float32).reshape(images.shape[0], -1)
            hidden = nn.relu(nn.Dense(4, name="dense1")(x))
            logits = nn.Dense(2 if returns == "two_logits" else 1, name="out" if returns == "no_head" else "head")(hidden)
            return {"pair": (logits, hidden), "logits_only": logits, "flat": (logits[:, 0], hidden),
                    "flat_hidden": (logits, hidden[:, 0]), "pooled_hidden": (logits, hidden.mean(0, keepdims=True)),
                    "two_logits": (logits, hidden), "no_head": (logits, hidden)}[returns if returns in (
                        "logits_only", "flat", "flat_hidden", "pooled_hidden") else "pair"]

    return make_net(Broken(), (8, 8))


@pytest.mark.parametrize("returns, outputs, needs_head, message", [
    ("logits_only", 1, None, r"must return \(logits, hidden\) .*; it returns ShapeDtypeStruct: return the pair"),
    ("flat", 1, None, r"returns logits \(2,\) and hidden \(2, 4\): size its output layer"),
    ("flat_hidden", 1, None, r"returns logits \(2, 1\) and hidden \(2,\): size its output layer"),
    ("pooled_hidden", 1, None, r"returns logits \(2, 1\) and hidden \(1, 4\): size its output layer"),
    ("pair", 2, None, r"logits \(batch, 2\) .* returns logits \(2, 1\) .*ModelContext.out_dim"),
    ("no_head", 1, "--head reset", r"--head reset acts on the output layer, the parameter group 'head', which model "
                                   r"'broken' does not have \(it has dense1, out\)"),
])
def test_a_model_that_breaks_the_output_contract_is_refused_in_one_line(returns, outputs, needs_head, message):
    from cljax.models import check_model_outputs

    check_model_outputs(_net("pair"), "broken", 1, needs_head="--head reset")
    check_model_outputs(_net("no_head"), "broken", 1)  # no setting needs the head
    with pytest.raises(CljaxError, match=rf"^.*{message}"):
        check_model_outputs(_net(returns), "broken", outputs, needs_head=needs_head)


@pytest.mark.parametrize("mistake, message", [
    ("not_a_rule", r"its builder returned a dict, not a cljax.rules.Rule"),
    ("scalar_per_leaf", r"its direction must have the structure, shapes and dtypes of the params"),
    ("list", r"its direction must have the structure"),
    ("three", r"direction must return \(direction, rule_state, model_state, metrics\); it returns tuple of 3"),
    ("no_acc", r"its metrics must be a dict with scalar 'loss' and 'acc' .*; it returns 'loss' of shape \(\), "
               r"'acc': missing"),
    ("per_example_loss", r"its metrics must be a dict with scalar 'loss' and 'acc' .*; it returns 'loss' of shape "
                         r"\(2,\), 'acc' of shape \(\)"),  # it named the keys, which were right
    ("no_key", r"its direction \(.*test_plugins.py, line \d+\) is direction\(net, p, model_state, rule_state, "
               r"images, labels, weights\); it must take \(net, params, .*, key\)"),  # a TypeError's traceback
])
def test_a_rule_that_breaks_the_contract_is_refused_in_one_line(mistake, message):
    import jax
    import jax.numpy as jnp

    from cljax.config import Config
    from cljax.rules import Rule, check_rule, make_rule

    net = _net("pair")
    check_rule(make_rule(Config(), net), net, "SL")

    def direction(net, p, model_state, rule_state, images, labels, weights, key=None):
        g = jax.tree.map(jnp.zeros_like, p)
        metrics = {"loss": jnp.zeros(()), "acc": jnp.zeros(())}
        if mistake == "scalar_per_leaf":
            g = jax.tree.map(lambda x: x.sum(), g)
        if mistake == "list":
            g = jax.tree.leaves(g)
        if mistake == "no_acc":
            metrics = {"loss": jnp.zeros(())}
        if mistake == "per_example_loss":
            metrics["loss"] = jnp.zeros(labels.shape)
        out = (g, rule_state, model_state, metrics)
        return out[:3] if mistake == "three" else out

    def no_key(net, p, model_state, rule_state, images, labels, weights):
        pass

    rule = {} if mistake == "not_a_rule" else Rule(init=lambda p, key: (),
                                                  direction=no_key if mistake == "no_key" else direction)
    with pytest.raises(CljaxError, match=rf"^rule 'Mine': {message}"):
        check_rule(rule, net, "Mine")


def test_a_plugin_rule_that_breaks_the_contract_is_refused_before_anything_is_written(tmp_path, capsys):
    """The contract is checked where the direction is traced, and a run's first trace is the
    planner's, before its folder exists: one line, and no folder."""
    from tests.run_folder_kit import assert_one_error, run_cli

    plugin = tmp_path / "sum_rule.py"
    plugin.write_text(RULE.format(name="SumPlug", scale=1.0).replace("1.0 * x, g)", "x.sum(), g)"))
    results_dir = tmp_path / "results"
    rc, _, err = run_cli(["run", "--plugin", str(plugin), "--algorithm", "SumPlug", "--results-dir", str(results_dir),
                          "--no-progress", *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]], capsys)
    assert_one_error(rc, err, "rule 'SumPlug': its direction must have the structure, shapes and dtypes of the params")
    assert not results_dir.exists()


def test_a_plugin_file_that_is_not_python_source_or_an_empty_name_is_one_line(tmp_path):
    """Python has no loader for a file without the .py suffix: named, not a traceback."""
    for name in ("plugin", "plugin.pyc", "plugin.so"):
        (tmp_path / name).write_text("x = 1\n")
        with pytest.raises(CljaxError, match=r"is not a Python source file \(\.py\): give the \.py file"):
            load_plugins([str(tmp_path / name)])
    with pytest.raises(CljaxError, match="a plugin file name is empty"):
        load_plugins([" "])
    nul = tmp_path / "nul.py"
    nul.write_bytes(b"a\x00b\n")
    with pytest.raises(CljaxError, match=r"is not valid Python \(source code"):
        load_plugins([str(nul)])


def test_a_plugin_that_failed_part_way_is_as_if_never_loaded_and_loads_again_once_fixed(tmp_path):
    # It stayed listed as loaded, with what it had registered before it raised: fixed, the same
    # file was skipped (a notebook's second try), and a sweep passed it on to its jobs.
    from cljax.analysis import registry as analyses
    from cljax.registry import RULES, loaded_plugins

    plugin = tmp_path / "half_done.py"
    body = RULE.format(name="HalfPlug", scale=1.0) + (
        "\nfrom cljax.analysis.registry import Analysis, Result, register as register_analysis\n"
        "register_analysis(Analysis('half_count', init=lambda c: 0, update=lambda n, f: n + 1,\n"
        "                           finalize=lambda n: Result(summary={'n': n})))\n")
    plugin.write_text(body + "raise RuntimeError('not yet')\n")
    with pytest.raises(CljaxError, match=r"half_done\.py raised RuntimeError when imported \(line \d+: not yet\)"):
        load_plugins([str(plugin)])
    assert "HalfPlug" not in RULES and "half_count" not in analyses._ANALYSES
    assert str(plugin.resolve()) not in loaded_plugins()
    plugin.write_text(body)
    load_plugins([str(plugin)])
    assert "HalfPlug" in RULES and "half_count" in analyses._ANALYSES and str(plugin.resolve()) in loaded_plugins()
    analyses.unregister("half_count")  # not in the later `cljax analyze` runs of this module


REPLACES_GLUE = """
from cljax.analysis.registry import Analysis, Result, register, unregister
unregister('glue')
register(Analysis('glue', init=lambda c: 0, update=lambda n, f: n + 1, finalize=lambda n: Result(summary={'n': n})))
"""


def test_a_plugin_that_replaced_a_built_in_analysis_then_failed_puts_the_built_in_back(tmp_path):
    # The built-in glue stayed unregistered: the fixed file's unregister('glue') then failed.
    from cljax.analysis import registry as analyses

    order, glue, saved = analyses.registered(), analyses.get("glue"), dict(analyses._ANALYSES)
    plugin = tmp_path / "new_glue.py"
    plugin.write_text(REPLACES_GLUE + "raise RuntimeError('not yet')\n")
    with pytest.raises(CljaxError, match="new_glue.py raised RuntimeError"):
        load_plugins([str(plugin)])
    assert analyses.registered() == order and analyses.get("glue") is glue
    plugin.write_text(REPLACES_GLUE)
    try:
        load_plugins([str(plugin)])
        assert analyses.get("glue") is not glue and analyses.get("glue").finalize(3).summary == {"n": 3}
    finally:  # the built-in for the later `cljax analyze` runs of this module
        analyses._ANALYSES.clear()
        analyses._ANALYSES.update(saved)


def test_a_plugin_that_imported_the_analyses_and_replaced_a_built_in_then_failed_puts_it_back(tmp_path):
    # The same when the plugin's import of the analysis registry registered the built-ins (a fresh process).
    plugin = tmp_path / "new_glue.py"
    plugin.write_text(REPLACES_GLUE + "raise RuntimeError('not yet')\n")
    code = ("import sys\nfrom cljax.registry import load_plugins\nassert 'cljax.analysis.analyses' not in sys.modules\n"
            f"try:\n    load_plugins([{str(plugin)!r}])\nexcept Exception as exc:\n    print(exc)\n"
            "from cljax.analysis import analyses, registry\n"
            "print(registry.registered(), registry.get('glue') is analyses.BUILTIN[4])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "('cl', 'plasticity', 'curves', 'run', 'glue', 'probe') True"


def test_a_plugin_that_imports_a_missing_package_is_one_line(tmp_path):
    plugin = tmp_path / "needs_more.py"
    plugin.write_text("import surely_not_installed_pkg\n")
    with pytest.raises(CljaxError, match=r"imports 'surely_not_installed_pkg', which is not installed here: install "):
        load_plugins([str(plugin)])


@pytest.mark.parametrize("declares, message", [
    ("sows", None),
    ("missing_layer", r": Units.unit_layers\(\) names 'hidden', which is not a top-level layer with a kernel \(it "
                      r"has dense1, head\)"),
    ("missing_reader", r": Units.unit_layers\(\) names 'nohead', which is not a top-level layer"),
    ("no_sow", r": Units sows the activity of 'dense1' with shape None for a batch of 2, not \(2, 4\): call sow_units"),
    ("wrong_shape", r": Units sows the activity of 'dense1' with shape \(2, 3\) for a batch of 2, not \(2, 4\)"),
    ("batchnorm", r" resets hidden units, which needs a model .* and has no mutable state; Units does not"),
])
def test_a_model_whose_unit_declaration_is_wrong_is_refused_by_cbp_in_one_line(declares, message):
    import flax.linen as nn
    import jax.numpy as jnp

    from cljax.models import as_float_images, make_net
    from cljax.models.units import sow_units, unit_layers

    class Units(nn.Module):
        def unit_layers(self):
            return (("hidden" if declares == "missing_layer" else "dense1",
                     "nohead" if declares == "missing_reader" else "head"),)

        @nn.compact
        def __call__(self, images, train: bool = False):
            x = as_float_images(images, jnp.float32).reshape(images.shape[0], -1)
            hidden = nn.relu(nn.Dense(4, name="dense1")(x))
            if declares == "batchnorm":
                hidden = nn.BatchNorm(use_running_average=not train, name="bn")(hidden)
            if declares not in ("no_sow", "wrong_shape"):
                sow_units(self, "dense1", hidden)
            if declares == "wrong_shape":
                sow_units(self, "dense1", hidden[:, :3])
            return nn.Dense(1, name="head")(hidden), hidden

    if declares == "sows":
        assert unit_layers(make_net(Units(), (8, 8)), "--use-cbp") == (("dense1", "head"),)
        return
    with pytest.raises(CljaxError, match=rf"^--use-cbp{message}"):
        unit_layers(make_net(Units(), (8, 8)), "--use-cbp")


def test_a_plugin_that_raises_when_imported_is_one_line_with_its_line(tmp_path):
    """A bug in the plugin (it printed cljax's whole traceback): the exception and the plugin's
    own line that raised it. cljax's own refusals stay as they are."""
    plugin = tmp_path / "buggy.py"
    plugin.write_text("x = 1\n\ndef f():\n    return {}['missing']\n\nf()\n")
    with pytest.raises(CljaxError, match=r"plugin file .*buggy.py raised KeyError when imported \(line 4: 'missing'\): "
                                         r"fix it, or leave it out of --plugin"):
        load_plugins([str(plugin)])
    own = tmp_path / "own.py"
    own.write_text("from cljax.errors import CljaxError\n\nraise CljaxError('the refusal, as it was worded')\n")
    with pytest.raises(CljaxError) as refused:
        load_plugins([str(own)])
    assert str(refused.value) == "the refusal, as it was worded"


def test_a_flag_of_a_plugin_given_without_its_file_points_to_plugin(capsys):
    # It said "unrecognized arguments: --use-gradnoise" alone; an --algorithm of a plugin already named --plugin.
    from tests.run_folder_kit import run_cli

    rc, _, err = run_cli(["run", "--use-gradnoise", "--no-progress"], capsys)
    assert rc == 2 and err == ("error: unrecognized arguments: --use-gradnoise (see `cljax run --help`; if it is a flag "
                               "of a plugin's entry, load its file: --plugin FILE or $CLJAX_PLUGINS)\n")
