"""A registry of its own (cljax/registry.py): flag names from an entry's prefix, and the order
of its names, which must not depend on the order entries registered in, and plugin files that
load once."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cljax.errors import CljaxError
from cljax.registry import Registry, load_plugins, param


@dataclass(frozen=True)
class _Params:
    reward_scale: float = param(1.0, "scale of the reward")
    bonus: float = param(0.0, "a bonus", flag="my-bonus")


def _build(params, ctx):
    """builds nothing"""


def test_an_empty_prefix_gives_flags_of_the_field_names_alone():
    # prefix="" is a choice (an entry whose settings read as cljax's own), not "no prefix given".
    registry = Registry("rule", "cljax.rules")
    registry.register("Plain", params=_Params, prefix="")(_build)
    registry.register("Named", params=_Params)(_build)
    plain, named = registry["Plain"], registry["Named"]
    assert sorted(plain.field_dests()) == ["my_bonus", "reward_scale"]
    assert sorted(named.field_dests()) == ["my_bonus", "named_reward_scale"]
    assert plain.params_from({"reward_scale": 3.0, "named_reward_scale": 9.0}) == _Params(reward_scale=3.0)
    assert named.params_to_flat(_Params(2.0, 0.5)) == {"named_reward_scale": 2.0, "my_bonus": 0.5}
    assert named.help == "builds nothing"


def test_names_are_sorted_whatever_order_they_registered_in():
    registry = Registry("option", "cljax.options")
    for name in ("zeta", "alpha", "mid"):
        registry.register(name, flag=f"use-{name}")(_build)
    assert registry.names() == ["alpha", "mid", "zeta"]
    assert [e.name for e in registry.entries()] == ["alpha", "mid", "zeta"]


def test_a_plugin_file_loads_once_however_often_and_however_it_is_named(tmp_path):
    # --plugin and $CLJAX_PLUGINS may name one file twice, by other spellings, around other files:
    # a second import would run it again and (as another module) register its entries twice.
    log = tmp_path / "imports.txt"
    (tmp_path / "sub").mkdir()
    for name in ("once", "other"):
        (tmp_path / f"{name}.py").write_text(f"with open({str(log)!r}, 'a') as f:\n    f.write('{name} ')\n")
    load_plugins([str(tmp_path / "once.py")])
    load_plugins([str(tmp_path / "other.py"), str(tmp_path / "sub" / ".." / "once.py")])
    load_plugins([str(tmp_path / "once.py")])
    assert log.read_text() == "once other "


def test_an_unknown_name_in_another_case_is_refused_with_the_registered_spelling():
    # Names are case-sensitive (they name result folders); "rl" is refused, pointing at "RL".
    registry = Registry("rule", "cljax.rules", setting="algorithm")
    registry.register("RL")(_build)
    registry.register("SL")(_build)
    with pytest.raises(CljaxError, match=r"unknown algorithm 'rl' \(did you mean 'RL'\?\): choose one of RL, SL "):
        registry["rl"]
    with pytest.raises(CljaxError, match=r"unknown algorithm 'XY': choose one of RL, SL with --algorithm"):
        registry["XY"]
    assert registry["RL"].name == "RL"
