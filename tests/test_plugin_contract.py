"""What a plugin's entry must give cljax, checked where it is given: its params' defaults when
it registers, its builder's return value, its dataset's class count and meta, its flags against
a command's own, and an exit it calls. Each mistake is one line naming the entry, not a
traceback or a silent exit. Plugins that register are loaded in a process of their own (an entry
registered in a test worker would be in every later run's settings there)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cljax.data import ClassData, check_class_data
from cljax.errors import CljaxError
from cljax.registry import Registry, load_plugins, param

ROOT = Path(__file__).parent.parent
TINY = ["--dataset", "synthetic", "--synthetic-classes", "4", "--num-tasks", "2", "--n-repeats", "2",
        "--n-train-per-class", "16", "--n-test-per-class", "8", "--n-subsamples", "4", "--epochs", "1",
        "--batch-size", "8", "--log-frequency", "2", "--no-progress"]


def _cljax(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cljax", *args], capture_output=True, text=True, cwd=cwd)


COMMANDS = """
import contextlib, io, json, sys

from cljax.cli import main

done = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # a plugin's exit that cljax let through ends this command alone
            code = exc.code
    done.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(done))
"""


def _cljax_each(*argvs, cwd=ROOT) -> list[subprocess.CompletedProcess]:
    """Several commands of one plugin file, each `cljax.cli.main(argv)` as `python -m cljax` calls
    it, in one process of their own (the plugin registers its entries once there, as in each of
    them, and never in this test worker): one JAX import, not one a command. Each gives its exit
    code and its own stdout and stderr."""
    import json

    proc = subprocess.run([sys.executable, "-c", COMMANDS, json.dumps([list(a) for a in argvs])], capture_output=True,
                          text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [subprocess.CompletedProcess(argv, code, out, err)
            for argv, (code, out, err) in zip(argvs, json.loads(proc.stdout.splitlines()[-1]))]


@pytest.mark.parametrize("field, message", [
    (("rate", float, param(-1.0, "a rate", min=0.0)), "the default of its setting rate must be at least 0.0, got -1.0"),
    (("mode", str, param("c", "a mode", choices=("a", "b"))), "the default of its setting mode must be one of a, b, "
                                                              "got 'c'"),
    (("count", int, param(None, "a count")), "the default of its setting count must be set"),
    (("count", int, dataclasses.field()), "its setting 'count' has no default: give it one"),
])
def test_a_default_its_own_bounds_refuse_is_the_entry_s_error_when_it_registers(field, message):
    # It was reported as the user's value ("--x-rate must be at least 0.0") at the first run that
    # enabled the option, naming a flag the user never typed.
    params = dataclasses.make_dataclass("P", [field], frozen=True)
    with pytest.raises(CljaxError, match=rf"^option 'mine' \({__file__}\): .*{message}"):
        Registry("option", "cljax.options").register("mine", params=params)(lambda p, c, n: None)
    fine = dataclasses.make_dataclass("Q", [("rate", float, param(0.0, "a rate", min=0.0))], frozen=True)
    Registry("option", "cljax.options").register("mine", params=fine)(lambda p, c, n: None)


def _data(**changes) -> ClassData:
    rng = np.random.default_rng(0)
    good = ClassData(train_images=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), train_labels=np.arange(12) % 3,
                     test_images=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), test_labels=np.arange(6) % 3,
                     n_classes=3, class_names=("a", "b", "c"), meta={"source": "here"})
    return dataclasses.replace(good, **changes)


@pytest.mark.parametrize("changes, message", [
    (dict(n_classes=3.0), r"gave n_classes = 3.0: give the number of classes, an integer of at least 2"),
    (dict(n_classes=True), r"gave n_classes = True: give the number of classes"),
    (dict(meta=None), r"gave meta as a NoneType: give a dict"),
    (dict(meta={"where": object()}), r"gave a meta that JSON cannot hold \(Object of type object is not JSON"),
    (dict(meta={"x": float("nan")}), r"gave a meta that JSON cannot hold \(Out of range float values"),
    (dict(meta={"x": "y" * (1 << 20)}), r"gave a meta of 1048585 bytes as JSON, above 1048576"),
])
def test_a_loader_s_class_count_and_meta_are_checked(changes, message):
    # A float count failed in numpy, an np.int64 one in json, a meta JSON cannot hold would fail
    # when run.json records it: tracebacks, before.
    with pytest.raises(CljaxError, match=rf"^dataset 'mine': its loader {message}"):
        check_class_data(_data(**changes), "mine")
    counted = check_class_data(_data(n_classes=np.int64(3)), "mine")
    assert type(counted.n_classes) is int and counted.n_classes == 3  # numpy's integers are counts too


def test_a_dataset_without_a_test_split_is_identified(tmp_path):
    # Its identity failed in a memoryview cast (a traceback); such data is legitimate under
    # --test-source train_holdout, and under the default the run names the classes it lacks.
    from cljax.data.prepared import data_identity

    empty = check_class_data(_data(test_images=_data().test_images[:0], test_labels=_data().test_labels[:0]), "mine")
    assert len(data_identity(empty)) == 64 and data_identity(empty) != data_identity(_data())


PLUGIN = '''
import sys
from dataclasses import dataclass

from cljax.registry import param, register_model, register_option


@register_model("exits")
def make_exits(params, ctx):
    sys.exit(0)


@register_option("returns_none", tag="rn", flag="use-rn")
def make_none(params, config, net):
    return None


@dataclass(frozen=True)
class Clash:
    on: bool = param(False, "a switch", flag="{flag}")


@register_option("clashing", params=Clash, tag="cf", flag="use-cf")
def make_clashing(params, config, net):
    return None
'''


def test_a_builder_that_exits_or_returns_no_entry_and_a_flag_a_command_has_are_one_line(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text(PLUGIN.format(flag="spare"))
    results = ["--results-dir", str(tmp_path / "r"), *TINY]
    exits, none = _cljax_each(["run", "--plugin", str(plugin), *results, "--model", "exits"],  # exited 0, silently
                              ["run", "--plugin", str(plugin), *results, "--use-rn", "--model", "mlp"])
    assert exits.returncode == 2 and exits.stderr == (f"error: plugin file {plugin} raised SystemExit at line 10 (0): "
                                                      f"fix it, or leave it out of --plugin / $CLJAX_PLUGINS.\n")
    # returns_none: an AttributeError deep in the step
    assert none.returncode == 2 and none.stderr == ("error: option 'returns_none': its builder returned a NoneType, "
                                                    "not a cljax.options.Option: return one.\n")
    assert not (tmp_path / "r").exists()
    for flag, clash in (("overwrite", "--overwrite"), ("progress", "--no-progress")):  # argparse's traceback
        plugin.write_text(PLUGIN.format(flag=flag))
        procs = _cljax_each(*([command, "--plugin", str(plugin), "--help"] for command in ("run", "plan", "sweep")))
        for command, proc in zip(("run", "plan", "sweep"), procs):
            assert proc.returncode == 2 and proc.stderr == (
                f"error: 'clashing' declares the flag {clash}, which `cljax {command}` has for itself: give that "
                f"setting another flag (param(..., flag=...)) in its plugin file.\n"), proc.stderr


def test_a_plugin_that_exits_when_imported_is_one_line(tmp_path):
    plugin = tmp_path / "quits.py"
    plugin.write_text("import sys\n\nsys.exit(3)\n")  # ended cljax with the plugin's code, without a word
    with pytest.raises(CljaxError, match=r"plugin file .*quits.py raised SystemExit when imported \(line 3: 3\)"):
        load_plugins([str(plugin)])


BIG_MODELS = '''
from cljax.models.mlp import MLP
from cljax.registry import register_model


def _mlp(params, ctx):
    return MLP(out_dim=ctx.out_dim, hidden=16, depth=1, dtype=ctx.compute_dtype)


register_model("plain")(_mlp)
register_model("big", compile_host_bytes=lambda params: 2**30)(_mlp)
register_model("garbled", compile_host_bytes="lots")(_mlp)
register_model("noarg", compile_host_bytes=lambda: 5)(_mlp)
register_model("half", compile_host_bytes=lambda params: 0.5)(_mlp)
'''


def test_a_model_s_compile_allowance_is_added_to_the_host_estimate_and_checked(tmp_path):
    import json

    plugin = tmp_path / "big.py"
    plugin.write_text(BIG_MODELS)
    flags = ["plan", "--plugin", str(plugin), "--results-dir", str(tmp_path / "r"), *TINY, "--json"]
    bad = (("garbled", "is 'lots'"), ("noarg", "is <function <lambda>"), ("half", "returned 0.5"))
    procs = _cljax_each(*([*flags, "--model", name] for name in ("big", "plain", *(name for name, _ in bad))))
    big, small = (json.loads(proc.stdout)["host_bytes_estimate"] for proc in procs[:2])
    assert big - small == 2**30  # the same network otherwise
    for (name, got), proc in zip(bad, procs[2:]):
        assert proc.returncode == 2 and proc.stderr.startswith(
            f"error: model {name!r}: its compile_host_bytes must be a function of its params that returns a whole "
            f"number of bytes >= 0, and {got}") and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("hook, fn, message", [
    ("step_end", lambda state, p, key: (state, p),  # a TypeError at cljax's call, naming no file of the plugin
     r"its step_end \(.*test_plugin_contract.py, line \d+\) is step_end\(state, p, key\); it must take \(state, "
     r"params, model_state, key, images, weights_B\)"),
    ("step_end", lambda state, p, *rest: p,  # "too many values to unpack" in cljax/step.py
     r"its step_end .* must return \(state, params\); it returns a dict"),
    ("step_end", lambda state, p, *rest: (state, {k: v[:1] for k, v in p.items()}),  # a scan carry's traceback
     r"its step_end .* returns params of another structure, shapes or dtypes than it was given"),
    ("direction", lambda state, p, d: {"w": d["w"]},
     r"its direction .* must return a pytree of the params' structure, shapes and dtypes; it does not"),
    ("step_reset", lambda state, p, opt_state, *rest: (state, p, ()),
     r"its step_reset .* returns opt_state of another structure"),
    ("task_end", lambda state, p, key, images, labels, t: (state, p, 0),
     r"its task_end .* must return \(state, params\); it returns a tuple of 3"),
])
def test_an_option_hook_of_the_wrong_signature_or_return_is_one_line_naming_it(hook, fn, message):
    import jax
    import jax.numpy as jnp

    from cljax.options import Option, _checked

    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}
    args = {"state": (), "params": params, "model_state": {}, "key": jax.random.key(0), "images": jnp.zeros((4, 2)),
            "weights_B": jnp.ones(4), "opt_state": {"m": params}, "direction": params, "train_images_N": jnp.zeros(4),
            "train_labels_N": jnp.zeros(4), "task_idx": 0}
    from cljax.hook_contract import OPTION_HOOKS

    with pytest.raises(CljaxError, match=rf"^option 'mine': {message}"):
        checked = _checked(Option(**{hook: fn}), "mine")
        getattr(checked, hook)(*(args[name] for name in OPTION_HOOKS[hook][0]))
    fine = _checked(Option(), "mine")  # the unset hooks stay the identities (keeps_batch compares them)
    assert fine == Option()


def test_a_hook_s_file_is_its_code_s_for_a_partial_and_a_bare_array_is_named_as_one():
    import functools

    import jax.numpy as jnp

    from cljax.options import Option, _checked

    def init(extra, params, key):
        return ()

    with pytest.raises(CljaxError, match=rf"its init \({__file__}, line \d+\) is init\(key\); it must take \(params, key\)"):
        _checked(Option(init=functools.partial(init, 1, 2)), "mine")  # it named functools.py
    checked = _checked(Option(task_end=lambda state, p, key, images, labels, t: jnp.zeros(2)), "mine")
    with pytest.raises(CljaxError, match=r"must return \(state, params\); it returns an array"):
        checked.task_end((), {"w": jnp.zeros(2)}, None, None, None, 0)


TRAIN_MODELS = '''
import flax.linen as nn
from cljax.models import as_float_images
from cljax.registry import register_model


class Needs(nn.Module):  # train without a default, as the README's contract (images, train) reads
    out_dim: int

    @nn.compact
    def __call__(self, images, train):
        hidden = nn.Dense(4)(as_float_images(images).reshape(images.shape[0], -1))
        return nn.Dense(self.out_dim, name="head")(hidden), hidden


class Takes(nn.Module):
    out_dim: int

    @nn.compact
    def __call__(self, images):
        hidden = nn.Dense(4)(as_float_images(images).reshape(images.shape[0], -1))
        return nn.Dense(self.out_dim, name="head")(hidden), hidden


register_model("needs")(lambda params, ctx: Needs(out_dim=ctx.out_dim))
register_model("takes")(lambda params, ctx: Takes(out_dim=ctx.out_dim))
'''


def test_a_model_s_train_argument_is_passed_by_name_and_its_absence_is_one_line(tmp_path):
    # `train` without a default gave a traceback from `plan` and `run` ("missing 1 required positional
    # argument"): cljax initialised and sized the model without passing it.
    plugin = tmp_path / "models.py"
    plugin.write_text(TRAIN_MODELS)
    results = ["--results-dir", str(tmp_path / "r"), *TINY]
    needs, takes = _cljax_each(["run", "--plugin", str(plugin), *results, "--model", "needs"],
                               ["plan", "--plugin", str(plugin), *results, "--model", "takes"])
    assert needs.returncode == 0, needs.stderr
    assert (tmp_path / "r" / "synthetic" / "SL_T2" / "task_001" / "weights.npy").is_file()
    assert takes.returncode == 2 and takes.stderr == (
        f"error: model 'takes': its __call__(self, images) ({plugin}, line 19) cannot be called as (images, "
        f"train=...): write it as __call__(self, images, train: bool = False), any further argument with a default.\n")


def test_the_readme_s_extension_examples_run_as_written(tmp_path):
    # Copied from the README, its rule lacked the imports it uses (NameError: dataclass) and its
    # model the classes it builds (LinearParams, Linear).
    import re

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    imports, model, rule = ([b for b in blocks if mark in b] for mark in (
        "from dataclasses import dataclass", "class LinearParams", "class SignParams"))
    assert len(imports) == len(model) == len(rule) == 1
    plugin = tmp_path / "readme_extension.py"
    plugin.write_text("\n".join([imports[0], model[0], rule[0]]))
    proc = _cljax("run", "--plugin", str(plugin), *TINY, "--model", "linear", "--linear-width", "8",
                  "--algorithm", "SignSGD", "--results-dir", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "r" / "synthetic" / "SignSGD_T2"
    assert np.load(run / "task_001" / "representations.npy").shape[-1] == 8  # the hidden layer, --linear-width
    # The same flags again without the plugin: its run.json's settings cannot be read; the line named no
    # plugin and said "Resume it with the cljax that wrote it", where run.json's sources name the file.
    proc = _cljax("run", "--plugin", str(plugin), *TINY, "--model", "linear", "--results-dir", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    proc = _cljax("run", *TINY, "--results-dir", str(tmp_path / "s"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.endswith(f"; it was trained with the plugin file {plugin.resolve()}, not loaded now: pass "
                                f"--plugin {plugin.resolve()} (or name it in $CLJAX_PLUGINS).\n"), proc.stderr
