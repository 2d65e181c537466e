"""The files of a run's entries (cljax/sources.py) on hand-made entries: what is recorded, and
which changes between the record and now a resume refuses or names."""

from __future__ import annotations

import hashlib
import re
import sys
import types
from pathlib import Path

import pytest

from cljax import sources
from cljax.errors import CljaxError
from cljax.registry import Entry
from tests.conftest import small_config


def _plugin_entry(monkeypatch, tmp_path, name, text="x = 1\n"):
    """An entry whose builder lives in plugin file ``name``.py, loaded as load_plugins names it."""
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    module = types.ModuleType(f"cljax_plugin_{name}_1")
    module.__file__ = str(path)
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def build(params, ctx):
        pass

    build.__module__ = module.__name__
    return Entry(name=name, build=build), path


def test_an_entry_of_a_plugin_file_is_recorded_with_the_hash_of_that_file(tmp_path, monkeypatch):
    # A plugin's module is "cljax_plugin_..." : a name that starts with "cljax" but is not cljax's.
    mine, path = _plugin_entry(monkeypatch, tmp_path, "mine", "print('mine')\n")
    own = Entry(name="SL", build=sources.entry_sources)  # a function of cljax itself: its file in the package
    monkeypatch.setattr(sources, "used_entries", lambda config: {"rule SL": own, "model mine": mine})
    own_file = Path(sources.__file__)
    assert sources.entry_sources(None) == {
        "model mine": {"file": str(path), "sha256": hashlib.sha256(b"print('mine')\n").hexdigest()},
        "rule SL": {"file": "cljax/sources.py", "sha256": hashlib.sha256(own_file.read_bytes()).hexdigest(),
                    "cljax": True}}


def _own_entry(monkeypatch, tmp_path, text):
    """An entry of cljax's own (its module's name starts with "cljax.") in a file of the package,
    as a researcher who adds a model to cljax/models/ has one."""
    monkeypatch.setattr(sources, "_PACKAGE_ROOT", tmp_path.resolve())  # the package's folder: not written to
    path = tmp_path / "cljax" / "models" / "own.py"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    module = types.ModuleType("cljax.models._test_own")
    module.__file__ = str(path)
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def build(params, ctx):
        pass

    build.__module__ = module.__name__
    return Entry(name="own", build=build), path


def test_a_changed_file_of_cljax_s_own_is_named_and_one_moved_from_a_plugin_unchanged_is_the_same_code(
        tmp_path, monkeypatch):
    # A model added inside the package was not recorded: edited between a kill and the resume, the
    # run mixed two networks without a word.
    own, path = _own_entry(monkeypatch, tmp_path, "kind = 'tanh'\n")
    monkeypatch.setattr(sources, "used_entries", lambda config: {"model own": own})
    recorded = sources.entry_sources(None)
    assert recorded["model own"]["file"] == f"cljax/models/{path.name}" and recorded["model own"]["cljax"]
    assert sources.check_sources(recorded, None, tmp_path) == []
    path.write_text("kind = 'relu'\n")
    warning, = sources.check_sources(recorded, None, tmp_path)
    assert warning.startswith(f"warning: the file of its model own, cljax/models/{path.name}, changed since the "
                              f"run started (a cljax update or an edit): the tasks this command trains run the new code")
    # The same file moved from --plugin into the package: the same content is the same code.
    plugin, plugin_path = _plugin_entry(monkeypatch, tmp_path, "own", "kind = 'relu'\n")
    monkeypatch.setattr(sources, "used_entries", lambda config: {"model own": plugin})
    as_plugin = sources.entry_sources(None)
    monkeypatch.setattr(sources, "used_entries", lambda config: {"model own": own})
    assert sources.check_sources(as_plugin, None, tmp_path) == []
    path.write_text("kind = 'gelu'\n")  # ... but not another content
    with pytest.raises(CljaxError, match=rf"its model own came from {re.escape(str(plugin_path))} and is now "
                                         rf"cljax's own \(cljax/models/{path.name}, of other content\)"):
        sources.check_sources(as_plugin, None, tmp_path)


def test_a_resume_refuses_an_entry_that_a_plugin_took_over_since_the_run_started(tmp_path, monkeypatch):
    mine, path = _plugin_entry(monkeypatch, tmp_path, "mine")
    theirs, _ = _plugin_entry(monkeypatch, tmp_path, "theirs")
    monkeypatch.setattr(sources, "used_entries", lambda config: {"model mine": mine})
    recorded = sources.entry_sources(None)
    sources.check_sources(recorded, None, tmp_path)  # unchanged: no error
    # The run started on cljax's own entries only (recorded sources {}, not a missing record).
    with pytest.raises(CljaxError, match=f"its model mine was cljax's own and now comes from {re.escape(str(path))}"):
        sources.check_sources({}, None, tmp_path)
    # It started with one plugin entry and now uses a second one from a plugin.
    monkeypatch.setattr(sources, "used_entries", lambda config: {"model mine": mine, "rule theirs": theirs})
    with pytest.raises(CljaxError, match=r"its rule theirs was cljax's own and now comes from .*theirs\.py"):
        sources.check_sources(recorded, None, tmp_path)


def test_the_enabled_options_are_among_the_entries_a_run_uses(tmp_path):
    config = small_config(tmp_path, use_l2=True)
    used = sources.used_entries(config)
    assert sorted(used) == ["dataset fashion_mnist", "model cnn", "option l2", "rule SL"]
    assert used["option l2"].name == "l2"
