"""The one typed parser of settings (cljax/flags.py): the types read from a dataclass, each
spelling a sweep grid accepts, and each integer bound at its edge and one past it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cljax.errors import CljaxError
from cljax.flags import INT_MAX, FieldType, add_flag, check_value, field_types, parse_text, range_text
from cljax.settings import parse_setting


@dataclasses.dataclass
class Settings:
    count: int = 1
    rate: float | None = None
    name: str = "a"
    on: bool = False


def test_field_types_read_the_base_type_and_whether_none_is_allowed():
    assert field_types(Settings) == {"count": FieldType(int, False), "rate": FieldType(float, True),
                                     "name": FieldType(str, False), "on": FieldType(bool, False)}
    assert field_types(Settings, names={"rate"}) == {"rate": FieldType(float, True)}
    check_value("--rate", FieldType(float, True), {}, None)  # an optional setting left unset
    with pytest.raises(CljaxError, match=r"^--count must be set\.$"):
        check_value("--count", FieldType(int, False), {}, None)


@pytest.mark.parametrize("text", ["none", "None", "NONE"])
def test_none_is_read_in_any_case_for_an_optional_setting_only(text):
    assert parse_text(FieldType(float, True), text, "--lr") is None
    assert parse_setting("lr", text) == ("lr", None)  # a grid's lr=None: the rule's own learning rate
    with pytest.raises(CljaxError, match=rf"^--momentum: {text!r} is not a valid float value\.$"):
        parse_setting("momentum", text)


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("1", True), ("yes", True), ("YES", True),
                                         ("false", False), ("0", False), ("no", False), ("No", False)])
def test_a_bool_in_a_grid_is_read_from_each_spelling(text, value):
    assert parse_text(FieldType(bool, False), text, "--use-replay") is value


@pytest.mark.parametrize("text", ["2", "on", "y", ""])
def test_a_bool_spelled_otherwise_is_refused_not_read_as_false(text):
    with pytest.raises(CljaxError, match=rf"^--use-replay: {text!r} is not a valid bool value\.$"):
        parse_text(FieldType(bool, False), text, "--use-replay")


def test_an_int_setting_takes_every_32_bit_value_and_refuses_one_past_either_end():
    ftype = FieldType(int, False)
    for value in (-INT_MAX - 1, 0, INT_MAX):
        check_value("--n", ftype, {}, value)
    with pytest.raises(CljaxError, match=r"^--n must be at least -2147483648 \(a 32-bit integer in the compiled "
                                         r"program\), got -2147483649: raise it\.$"):
        check_value("--n", ftype, {}, -INT_MAX - 2)
    with pytest.raises(CljaxError, match=r"^--n must be at most 2147483647 \(a 32-bit integer in the compiled "
                                         r"program\), got 2147483648: lower it\.$"):
        check_value("--n", ftype, {}, INT_MAX + 1)
    # A declared max replaces the 32-bit one (a seed keeps 32 unsigned bits), without the 32-bit reason.
    check_value("--seed", ftype, {"max": 2**32 - 1}, 2**32 - 1)
    with pytest.raises(CljaxError, match=r"^--seed must be at most 4294967295, got 4294967296: lower it\.$"):
        check_value("--seed", ftype, {"max": 2**32 - 1}, 2**32)
    # A learning rate past float32's largest number overflowed inside the step (a JAX warning, then NaN)
    from cljax.config import Config

    for flag in ("lr", "lr_features", "lr_classifier"):
        with pytest.raises(CljaxError, match=rf"^--{flag.replace('_', '-')} must be at most 3\.40\d*e\+38, got 1e\+39\.$"):
            Config.from_flat({flag: 1e39}).validate()
    Config.from_flat(lr=3.4e38).validate()


def test_a_bool_is_not_taken_for_a_number_nor_a_number_for_a_bool():
    with pytest.raises(CljaxError, match=r"^--n-repeats must be an integer, got True\.$"):
        check_value("--n-repeats", FieldType(int, False), {"min": 1}, True)
    with pytest.raises(CljaxError, match=r"^--lr must be a number, got False\.$"):
        check_value("--lr", FieldType(float, True), {}, False)
    with pytest.raises(CljaxError, match=r"^--use-replay must be true or false, got 1\.$"):
        check_value("--use-replay", FieldType(bool, False), {}, 1)


def test_a_bool_flag_is_a_pair_that_sets_and_clears_it():
    parser = argparse.ArgumentParser()
    add_flag(parser, "use-replay", "use_replay", FieldType(bool, False), {}, True)
    assert parser.parse_args([]).use_replay is True
    assert parser.parse_args(["--no-use-replay"]).use_replay is False
    assert parser.parse_args(["--no-use-replay", "--use-replay"]).use_replay is True  # the last one wins


@pytest.mark.parametrize("ftype, meta, said", [
    (FieldType(int, False), {"min": 1}, ">=1"), (FieldType(float, False), {"min": 0.0, "max": 0.999}, "in [0,0.999]"),
    (FieldType(float, False), {"max": 1.0}, "<=1"), (FieldType(int, False), {"min": 0, "max": 2**62}, "in [0,2^62]"),
    (FieldType(int, False), {"min": 0, "max": 2**32 - 1}, "in [0,2^32-1]"), (FieldType(int, False), {}, ""),
    (FieldType(str, False), {"choices": ("a", "b")}, ""), (FieldType(float, True), {"min": 3e-06}, ">=3e-06")])
def test_a_range_is_said_as_check_value_applies_it(ftype, meta, said):
    assert range_text(ftype, meta) == said
    for bound, inside in (("min", 1), ("max", -1)):  # both ends allowed, one step past either refused
        edge = meta.get(bound)
        if edge is not None and ftype.base in (int, float):
            check_value("--x", ftype, meta, edge)
            with pytest.raises(CljaxError):
                check_value("--x", ftype, meta, edge - inside)


def test_a_flags_help_has_its_choices_in_the_usage_and_its_range_beside_its_default():
    parser = argparse.ArgumentParser()
    add_flag(parser, "head", "head", FieldType(str, False), {"help": "the head", "choices": ("shared", "multi")}, "shared")
    add_flag(parser, "rate", "rate", FieldType(float, False), {"help": "a rate", "min": 0.0, "max": 1.0}, 0.5)
    add_flag(parser, "lr-x", "lr_x", FieldType(float, True), {"help": "its rate (default: --lr)", "min": 0.0}, None)
    add_flag(parser, "lr", "lr", FieldType(float, True), {"help": "default: the rule's own", "min": 0.0}, None)
    text = " ".join(parser.format_help().split())
    assert "[--head {shared,multi}]" in text and "--head {shared,multi} the head (default: shared)" in text
    assert "--rate RATE a rate (in [0,1]; default: 0.5)" in text
    assert "--lr-x LR_X its rate (>=0; default: --lr)" in text  # a default the text names is kept, the range beside it
    assert "--lr LR default: the rule's own (>=0)" in text
    assert parser.parse_args(["--head", "multi", "--rate", "1"]).rate == 1.0
