"""The command-line flags of a run, generated from Config and the registries' params
dataclasses, and read back into a Config. ``cljax run``, ``plan`` and ``sweep`` share them."""

from __future__ import annotations

import argparse
import difflib
import re
import sys

from cljax.config import Config, field_types_of, option_switch, settings_fields
from cljax.errors import CljaxError
from cljax.flags import add_flag, field_types, flag_values, parse_text
from cljax.presets import PRESETS, preset_from_argv
from cljax.registry import (DATASETS, MODELS, OPTIONS, RULES, default_lr, ignored_settings, load_plugins,
                            source_file)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2, naming the flags
    closest to a misspelt one, and takes flags only as written in full: ``--preset`` and
    ``--plugin`` are read from argv before the parser exists, so an abbreviation (``--pres``)
    would parse and then be ignored. A value that starts with a minus and a digit (``--seeds
    -1,2``, ``--lr -1e-3``) is read as the flag's value, to be checked as one, not as a flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        joined = []
        while args:
            arg = args.pop(0)
            if arg == "--":  # what follows is positional, as typed
                joined += [arg, *args]
                break
            action = self._option_string_actions.get(arg)
            if action is not None and action.nargs is None and args and re.match(r"-\.?\d", args[0]):
                arg = f"{arg}={args.pop(0)}"  # argparse took "-1,2" for a flag ("expected one argument")
            joined.append(arg)
        return super().parse_known_args(joined, namespace)

    def error(self, message):
        unknown = message.split(": ", 1)[1].split() if message.startswith("unrecognized arguments: ") else []
        near = {bad: self.closest_flags(bad) for bad in unknown if bad.startswith("--")}
        near = {bad: flags for bad, flags in near.items() if flags}
        plugin = ("; if it is a flag of a plugin's entry, load its file: --plugin FILE or $CLJAX_PLUGINS"
                  if message.startswith("unrecognized arguments: --") else "")
        said = ", ".join(f"{' or '.join(flags)}{f' (for {bad})' if len(near) > 1 else ''}" for bad, flags in near.items())
        self.exit(2, f"error: {message}{f': did you mean {said}?' if near else ''} (see `{self.prog} --help`{plugin})\n")

    def closest_flags(self, typed: str) -> list[str]:
        """The flags nearest ``typed`` (``--n-repeat``, ``--num_tasks=2``): its own flag when only
        ``_`` for ``-`` is wrong, else at most two close ones (difflib)."""
        name = typed.split("=", 1)[0].lstrip("-").replace("_", "-")
        flags = [f[2:] for f in self._option_string_actions if f.startswith("--")]
        if name in flags:
            return [f"--{name}"]
        return [f"--{f}" for f in difflib.get_close_matches(name, flags, n=2, cutoff=0.75)]


def load_plugins_from_argv(argv: list[str]) -> None:
    """Load ``--plugin FILE`` files before the flags are generated (their entries add flags)."""
    load_plugins(flag_values(argv, "--plugin"))
    load_plugins()


def setting_specs() -> dict[str, tuple]:
    """Flat setting name -> (flag, FieldType, metadata, default, aliases, users): Config's fields,
    every option's switch, and every entry's params fields (entries that declare the same flag
    share it)."""
    specs: dict[str, tuple] = {}
    types_ = field_types_of(Config)
    for f in settings_fields(Config):
        specs[f.name] = (f.name.replace("_", "-"), types_[f.name], f.metadata, f.default, (), ())
    bool_type = field_types(type("Switch", (), {"__annotations__": {"on": bool}}))["on"]
    # every spelling of a flag, and of an option's tag (a results folder's name), -> who has it
    owners = {name.lstrip("-"): "a setting of cljax run" for spec in specs.values()
              for name in (spec[0], *spec[4], *(spec[2] or {}).get("aliases", ()))}
    tags: dict[str, str] = {}
    for entry in OPTIONS.entries():
        switch = option_switch(entry)
        me = f"option {entry.name!r} ({source_file(entry.build)})"
        spellings = [a.lstrip("-") for a in (switch.replace("_", "-"), *entry.aliases)]
        clash = [(f"the flag --{a}", owners[a]) for a in spellings if a in owners]
        clash += [(f"the tag {entry.tag!r} (a results folder's name)", tags[entry.tag])] if entry.tag in tags else []
        if clash:
            raise CljaxError(f"{me} and {clash[0][1]} share {clash[0][0]}: give one of them its own.")
        owners.update(dict.fromkeys(spellings, me))
        tags[entry.tag] = me
        specs[switch] = (switch.replace("_", "-"), bool_type, {"help": entry.help}, False, entry.aliases, ())
    for kind, registry in (("rule", RULES), ("model", MODELS), ("dataset", DATASETS), ("option", OPTIONS)):
        for entry in registry.entries():
            ftypes = field_types(entry.params)
            for dest, f in entry.field_dests().items():
                spec = (entry.field_flag(f), ftypes[f.name], f.metadata, f.default, f.metadata.get("aliases", ()),
                        (entry.name,))
                if dest in specs:
                    old = specs[dest]
                    if old[1] != spec[1] or old[3] != spec[3]:
                        first = ", ".join(old[5]) or "cljax run's own settings"
                        raise CljaxError(f"--{spec[0]} is declared differently by {first} and {kind} {entry.name!r} "
                                         f"({source_file(entry.build)}): rename one of the two fields' flags.")
                    spec = (*old[:5], old[5] + (entry.name,))
                specs[dest] = spec
    return specs


def flag_clash(exc: argparse.ArgumentError, command: str) -> str:
    """The line for a flag that a command defines twice: an entry's setting that took a flag the
    command has for itself (``--overwrite``, ``--grid``, a bool's ``--no-`` form), named by its
    entry and file."""
    clashing = [name.strip() for name in str(exc.message).split(":", 1)[-1].split(",")]
    owners = [", ".join(users) for flag, ftype, _, _, aliases, users in setting_specs().values() if users and any(
        c in (f"--{flag}", *aliases) or (ftype.base is bool and c == f"--no-{flag}") for c in clashing)]
    who = f"{owners[0]!r} declares" if owners else "a setting declares"
    return (f"{who} the flag {' or '.join(clashing)}, which `cljax {command}` has for itself: give that setting "
            f"another flag (param(..., flag=...)) in its plugin file.")


def add_settings_flags(parser: argparse.ArgumentParser, argv: list[str] = ()) -> None:
    """One flag per setting, with its help text and default; ``--plugin`` to load extensions;
    ``--preset`` (found in ``argv``) to change the defaults (cljax/presets.py)."""
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE",
                        help="a Python file that registers rules, options, models or datasets (repeatable)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a named protocol's settings as defaults; flags given beside it win (cljax/presets.py) "
                             "(default: none)")
    specs = setting_specs()
    registries = {"dataset": DATASETS, "algorithm": RULES, "model": MODELS}
    for dest, (flag, ftype, meta, default, aliases, users) in specs.items():
        note = f" [{', '.join(users)}]" if len(users) > 1 else ""
        if dest in registries:  # what is registered now, plugins included
            note = f": {', '.join(registries[dest].names())}"
        if dest == "lr":  # each rule's default_lr, plugins' included
            note = " " + ", ".join(f"{name} {default_lr(name)}" for name in RULES.names())
        if dest == "data_dir":  # each dataset's own place (register_dataset(..., data_dir=...))
            places = [f"{e.name}: {e.extra['data_dir']}" for e in DATASETS.entries() if "data_dir" in e.extra]
            note = f" (default: {'; '.join(places)})" if places else " (default: the dataset's own place)"
        add_flag(parser, flag, dest, ftype, meta, default, aliases, note)
    preset = preset_from_argv(list(argv))
    unknown = sorted(set(preset) - set(specs))
    if unknown:
        raise CljaxError(f"the preset sets unknown setting(s) {', '.join(unknown)}: fix cljax/presets.py.")
    parser.set_defaults(**preset)


RUN_ONLY_FLAGS = {
    "--overwrite": "delete an existing run's results (task folders, checkpoint, analysis) and start again "
                   "(default: resume the same run, refuse another unless it finished no task)",
    "--allow-nonfinite": "go on when a loss becomes NaN or inf (default: record it and stop)",
    "--no-progress": "no progress (a bar on a terminal; a line as it starts, one after the first task and at "
                     "most one a minute when stderr is a file, a SLURM job's log or a sweep job's)",
}


REPAIR_HELP = ("write damaged task folders below the checkpoint (or a missing checkpoint) anew by training the tasks up "
               "to them again, from the nearest --keep-checkpoints state or from task 0; the folders recomputed on the "
               "way are compared with their record (default: refuse the run)")


def add_repair_flag(parser: argparse.ArgumentParser, note: str = "") -> None:
    """``--repair`` (``cljax run`` and ``cljax sweep``: cljax/kept_checkpoints.py)."""
    parser.add_argument("--repair", action="store_true", help=REPAIR_HELP + note)


def check_repair(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.repair and args.overwrite:
        parser.error("--repair keeps the run and --overwrite deletes it: pass one of them")


def add_run_flags(parser: argparse.ArgumentParser, note: str = "", notes: dict[str, str] | None = None) -> None:
    """The flags of ``cljax run`` that are not settings; ``plan`` and ``sweep`` accept them too.
    ``note`` ends each one's help, unless ``notes`` has one of that flag's own."""
    for flag, help_text in RUN_ONLY_FLAGS.items():
        parser.add_argument(flag, action="store_true", help=help_text + (notes or {}).get(flag, note))


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config of parsed flags."""
    return Config.from_flat({dest: getattr(args, dest) for dest in setting_specs() if hasattr(args, dest)})


def parse_setting(name: str, text: str):
    """A value typed in a sweep grid, for setting ``name`` (a flat name or a flag)."""
    dest = name.lstrip("-").replace("-", "_")
    specs = setting_specs()
    if dest not in specs:
        raise CljaxError(f"unknown setting {name!r} in the grid: use a run flag's name, e.g. lr or n_repeats.")
    flag, ftype, *_ = specs[dest]
    return dest, parse_text(ftype, text, f"--{flag}")


def flat_defaults() -> dict:
    """Every setting's default, flat."""
    return {dest: spec[3] for dest, spec in setting_specs().items()}


def unused_settings(flat: dict, inert: bool = True) -> dict[str, str]:
    """Flat setting -> why the run of these settings does not use it: a setting of a rule, model
    or dataset the run did not choose, of an option that is off, or one that acts only under
    another setting's value (``applies_when``); with ``inert``, an option's switch when the
    option's ``inert`` (registered with it: ``inert(params, config)``) says it would never act in
    this run (a warning only: the option is on, and a sweep grid of it is not a grid of nothing)."""
    config = Config.from_flat(flat)
    used = config.to_dict()
    enabled = {name for name, _ in config.option_params}
    chosen = {"rule": (RULES, "--algorithm", config.algorithm), "model": (MODELS, "--model", config.model),
              "dataset": (DATASETS, "--dataset", config.dataset)}
    why = {}
    for dest, (_, _, meta, _, _, users) in setting_specs().items():
        if dest not in flat:
            continue
        when = (meta or {}).get("applies_when")
        if users and dest not in used:  # first: that --bio-epsilon is Bio's says more than its --bio-policy
            owners = []
            for name in users:
                if name in OPTIONS and name not in enabled:
                    switches = [option_switch(OPTIONS[name]).replace("_", "-"), *OPTIONS[name].aliases]
                    turn_on = " or ".join(f"--{a.lstrip('-')}" for a in switches)
                    owners.append(f"option {name}, which is off ({turn_on} turns it on)")
                for kind, (registry, flag, value) in chosen.items():
                    if name in registry and name != value:
                        owners.append(f"{kind} {name}, and this run's {flag} is {value}")
            why[dest] = f"it is a setting of {'; of '.join(owners) or ', '.join(users)}"
        elif when and used.get(when[0]) != when[1]:
            why[dest] = f"it acts only with --{when[0].replace('_', '-')} {when[1]}"
    for dest, entry in ignored_settings(flat).items():  # settings the chosen rule, model or dataset never reads
        if dest in flat:
            why.setdefault(dest, f"{entry} does not read it")
    rule_inert = RULES[config.algorithm].extra.get("inert") if inert else None  # the rule's settings it ignores here
    for dest, reason in (rule_inert(config.rule_params, config) if rule_inert is not None else {}).items():
        why.setdefault(dest, reason)
    for name, params in config.option_params if inert else ():  # an option on, whose settings leave it nothing to do
        hook = OPTIONS[name].extra.get("inert")
        reason = hook(params, config) if hook is not None else None
        if reason and option_switch(OPTIONS[name]) in flat:
            why[option_switch(OPTIONS[name])] = reason
    return why


def warn_unused(parser: argparse.ArgumentParser, args: argparse.Namespace, whys: list[dict] | None = None) -> None:
    """A warning line on stderr for each flag given a value (other than its default) that the
    run does not use (``whys``: the ``unused_settings`` of each run of a sweep; a flag none of
    them uses): a researcher who forgot an option's switch would otherwise train the baseline,
    with the option's settings in the command line, and not be told."""
    specs = setting_specs()
    flat = {dest: getattr(args, dest) for dest in specs if hasattr(args, dest)}
    where = "this run" if whys is None else "any run of the sweep"
    if whys is None:
        try:
            Config.from_flat(flat).validate()
            whys = [unused_settings(flat)]
        except CljaxError:  # settings that do not make a run: the run's own check says why, in one line
            return
    for dest in flat:
        if flat[dest] != parser.get_default(dest) and whys and all(dest in why for why in whys):
            value = flat[dest]  # as typed: a bool is --x or --no-x
            given = f"--{specs[dest][0]}" if value is True else f"--no-{specs[dest][0]}" if value is False else \
                f"--{specs[dest][0]} {value}"
            reasons = list(dict.fromkeys(why[dest] for why in whys))  # a sweep's runs may each have their own
            said = reasons[0] if len(reasons) == 1 else "by run, " + "; ".join(reasons)
            print(f"warning: {given} has no effect in {where}: {said}.", file=sys.stderr)
