"""One registry per extension point: rules, options, models, datasets.

An entry is a name, a builder, and a frozen params dataclass of its own settings::

    @dataclass(frozen=True)
    class RLParams:
        entropy: float = param(0.2, "weight of the policy-entropy bonus", min=0.0)

    @register_rule("RL", params=RLParams, default_lr=0.1)
    def make_rl(params: RLParams, ctx) -> Rule: ...

The params fields become command-line flags (``--rl-entropy``: the entry's ``prefix`` and the
field name) and sweep keys, through one typed parser (``cljax.flags``); a field may name its own
flag with ``param(..., flag="rl-reward")``, and several entries may share a flag when they
declare it alike (RL and Bio share ``--rl-reward``). A flag's value reaches the entry only when
the entry is in use (its rule or model is selected, its option is enabled).

Entries are found without a closed import list: every module of the registry's package is
imported on first use, and files outside the package register themselves when loaded with
:func:`load_plugins` (``--plugin FILE`` or ``CLJAX_PLUGINS=FILE[:FILE...]``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pkgutil
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cljax.errors import CljaxError
from cljax.safe_files import file_sha256

PLUGINS_ENV = "CLJAX_PLUGINS"
_generation = [0]  # registrations so far, of every registry (cljax.program keys the programs it keeps on it)


def generation() -> int:
    """How many entries have been registered in this process: it changes whenever one is
    added or replaced (a plugin file loaded again), so what was built from the entries before
    is known to be stale."""
    return _generation[0]


_NOT_GIVEN = object()


def param(default, help: str, *, choices=None, min=None, max=None, flag: str | None = None, aliases: tuple = (),
          absent=_NOT_GIVEN, applies_when: tuple[str, Any] | None = None):
    """A field of a params dataclass (or of Config): default, help text, bounds, flag name.

    ``absent``: for a setting added after runs were recorded without it, the value those runs
    ran with (the behaviour before the setting existed); a resume compares a record that lacks
    the setting with this value, not with today's default.
    ``applies_when``: (setting, value) for a setting that only acts when another has that value
    (``--head-reset-to`` with ``--head reset``); elsewhere a resume does not compare it."""
    metadata = {"help": help, "choices": choices, "min": min, "max": max, "flag": flag, "aliases": tuple(aliases)}
    if absent is not _NOT_GIVEN:
        metadata["absent"] = absent
    if applies_when is not None:
        metadata["applies_when"] = tuple(applies_when)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class NoParams:
    """The params of an entry without settings."""


@dataclass(frozen=True)
class Entry:
    """A registered rule, option, model or dataset."""

    name: str
    build: Callable[..., Any]
    params: type = NoParams
    prefix: str = ""  # flags are --{prefix}-{field} unless the field names its own
    tag: str = ""  # options: the part of the results-folder name
    flag: str = ""  # options: the flag that turns it on (--use-replay)
    aliases: tuple = ()  # options: other spellings of that flag
    help: str = ""
    extra: dict = field(default_factory=dict)  # entry-kind specific (a rule's default_lr)

    def field_flag(self, f: dataclasses.Field) -> str:
        """The flag of one params field, without the leading dashes."""
        return f.metadata.get("flag") or f"{self.prefix}-{f.name}".replace("_", "-").strip("-")

    def field_dests(self) -> dict[str, dataclasses.Field]:
        """Flat setting name (the flag with underscores) -> params field."""
        return {self.field_flag(f).replace("-", "_"): f for f in dataclasses.fields(self.params)}

    def params_from(self, flat: dict) -> Any:
        """This entry's params from flat settings (missing ones take their defaults)."""
        kwargs = {f.name: flat[dest] for dest, f in self.field_dests().items() if dest in flat}
        return self.params(**kwargs)

    def params_to_flat(self, params) -> dict:
        return {dest: getattr(params, f.name) for dest, f in self.field_dests().items()}


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # an entry's name or tag: part of a folder name
_FLAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a flag or a flag prefix


class Registry:
    """Name -> Entry for one extension point, filled by importing the modules of ``package``."""

    def __init__(self, kind: str, package: str, setting: str | None = None):
        self.kind = kind
        self.setting = setting  # the Config field (and flag) that names an entry, if one does
        self.package = package
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, *, params: type = NoParams, prefix: str | None = None, tag: str = "",
                 flag: str = "", aliases: tuple = (), help: str = "", **extra):
        """Decorator: register ``build`` under ``name`` with its params dataclass."""
        if not (dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen):
            raise TypeError(f"{self.kind} {name!r}: params must be a frozen dataclass")
        # A name and a tag become parts of the results path, a flag and a prefix parts of flags: a
        # "../x" wrote the run outside --results-dir, a "use me" made a flag no one can type.
        for what, value, pattern in (("name", name, _NAME), ("tag", tag or "x", _NAME),
                                     ("flag", flag or "x", _FLAG), ("prefix", prefix or "x", _FLAG)):  # "": none
            if not (isinstance(value, str) and pattern.fullmatch(value)):
                raise CljaxError(f"{self.kind} {name!r}: its {what} {value!r} must be letters, digits and "
                                 f"{'_ . + -' if pattern is _NAME else '_ -'} (not starting with one of these): it "
                                 f"names a folder or a flag; rename it.")

        def wrap(build):
            _check_defaults(self.kind, name, params, build)
            old = self._entries.get(name)  # the same module imported again replaces its own entry
            if old is not None and (old.build.__module__ != build.__module__
                                    or old.build.__qualname__ != build.__qualname__):
                raise CljaxError(f"{self.kind} {name!r} is registered twice, by {source_file(old.build)} "
                                 f"({old.build.__qualname__}) and {source_file(build)} ({build.__qualname__}): rename "
                                 f"one (an entry cannot replace another).")
            self._entries[name] = Entry(name=name, build=build, params=params,
                                        prefix=name.lower() if prefix is None else prefix, tag=tag, flag=flag,
                                        aliases=tuple(aliases), help=help or (build.__doc__ or "").strip().split("\n")[0],
                                        extra=extra)
            _generation[0] += 1
            return build

        return wrap

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")
        load_plugins()

    def names(self) -> list[str]:
        """The entries' names, sorted: the order options are applied in and their tags appear in
        a run folder's name, so it must not depend on which module a process imported first."""
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._load()
        return [self._entries[name] for name in sorted(self._entries)]

    def __contains__(self, name) -> bool:
        self._load()
        return name in self._entries

    def __getitem__(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            how = f" with --{self.setting}" if self.setting else ""
            same = [n for n in sorted(self._entries) if str(name).lower() == n.lower()]  # names are case-sensitive
            hint = f" (did you mean {same[0]!r}?)" if same else ""
            raise CljaxError(f"unknown {self.setting or self.kind} {name!r}{hint}: choose one of "
                             f"{', '.join(sorted(self._entries))}{how}, or load the file that registers it "
                             f"(--plugin FILE or ${PLUGINS_ENV}).")
        return self._entries[name]


def _check_defaults(kind: str, name: str, params: type, build: Callable) -> None:
    """Each params field has a default its own bounds, choices and type allow: checked when the
    entry registers, so that a wrong default reads as the entry's error, not as a value the user
    gave (the run names the flag, which the user never typed)."""
    from cljax.flags import check_value, field_types

    types_ = field_types(params)
    for f in dataclasses.fields(params):
        where = f"{kind} {name!r} ({source_file(build)})"
        if f.default is dataclasses.MISSING:
            raise CljaxError(f"{where}: its setting {f.name!r} has no default: give it one with param(default, help).")
        try:
            check_value(f.name, types_[f.name], f.metadata, f.default)
        except CljaxError as exc:
            problem = str(exc).split(": ")[0].rstrip(".")  # without the fix a user's value gets
            raise CljaxError(f"{where}: the default of its setting {problem}: fix the default (or its bounds) in "
                             f"its params.") from None


def source_file(build: Callable) -> str:
    """The file that defines ``build`` (its module's name when it has none)."""
    module = sys.modules.get(build.__module__)
    return str(getattr(module, "__file__", None) or build.__module__)


def is_builtin(build: Callable) -> bool:
    """Whether ``build`` is part of cljax (not of a plugin file)."""
    return build.__module__ == "cljax" or build.__module__.startswith("cljax.")


_loaded_plugins: dict[str, str] = {}  # the files loaded, in order -> the sha256 of the content imported


def loaded_plugin_sha256(path) -> str | None:
    """The sha256 of a loaded plugin file's content as this process imported it (None: not a
    loaded plugin file): what its run records, though the file be edited since (the code that
    runs is the imported one; a new process imports the file as it is then)."""
    return _loaded_plugins.get(str(Path(path).resolve()))


def loaded_plugins() -> list[str]:
    """The plugin files this process loaded, resolved, in the order they were loaded (what a
    sweep's jobs load again)."""
    return list(_loaded_plugins)


def load_plugins(paths: list[str] | None = None) -> None:
    """Import extension files (each registers its entries on import): ``paths``, else the
    files listed in ``$CLJAX_PLUGINS`` (separated by ``os.pathsep``). Each file loads once; one that
    failed is as if never given (what it registered is removed), so given again it loads anew."""
    if paths is None:
        paths = [p for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]
    for p in paths:
        if not str(p).strip():
            raise CljaxError(f"a plugin file name is empty: give a Python file (.py) to --plugin or ${PLUGINS_ENV}.")
        path = Path(p).expanduser().resolve()
        if str(path) in _loaded_plugins:
            continue
        if not path.is_file():
            what = "is a folder, not a Python file" if path.is_dir() else "does not exist"
            raise CljaxError(f"plugin file {p} {what}: fix --plugin or ${PLUGINS_ENV}.")
        if path.suffix != ".py":  # Python imports a source file by its suffix (no loader for another)
            raise CljaxError(f"plugin file {p} is not a Python source file (.py): give the .py file to --plugin or "
                             f"${PLUGINS_ENV}.")
        try:  # read before the import: the content that runs
            _loaded_plugins[str(path)] = file_sha256(path)
        except OSError as exc:
            raise CljaxError(f"plugin file {p} cannot be read ({exc.strerror}): fix its permissions.") from None
        name = f"cljax_plugin_{path.stem}_{len(_loaded_plugins)}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        analyses = _analyses_now()
        try:
            _run_plugin(p, path, spec, module)
        except BaseException:  # as if never loaded: fixed, the same file loads again in this process (a notebook)
            del _loaded_plugins[str(path)]
            sys.modules.pop(name, None)
            _unregister_module(name, analyses)
            raise


def _analyses_now() -> dict | None:
    """The analyses registered now; None before the built-ins are (cljax.analysis.analyses not imported)."""
    return (dict(sys.modules["cljax.analysis.registry"]._ANALYSES) if "cljax.analysis.analyses" in sys.modules
            else None)


def _unregister_module(module: str, analyses_before: dict | None = None) -> None:
    """Remove what the plugin module ``module`` registered before it failed, and put back the
    analyses it unregistered (``analyses_before``: those registered before it ran; None: the built-ins)."""
    analyses = sys.modules.get("cljax.analysis.registry")
    boards = [board._entries for board in (RULES, OPTIONS, MODELS, DATASETS)]
    for entries in boards:
        for key in [k for k, entry in entries.items() if getattr(entry.build, "__module__", None) == module]:
            del entries[key]
            _generation[0] += 1
    if analyses is not None:
        for key in [k for k, a in analyses._ANALYSES.items()
                    if module in (getattr(f, "__module__", None) for f in (a.init, a.update, a.finalize))]:
            del analyses._ANALYSES[key]
        before = analyses_before
        if before is None and "cljax.analysis.analyses" in sys.modules:  # the plugin imported the built-ins
            before = {a.name: a for a in sys.modules["cljax.analysis.analyses"].BUILTIN}
        if before is not None and any(analyses._ANALYSES.get(k) is not a for k, a in before.items()):
            now = dict(analyses._ANALYSES)  # in their order, then the others' registrations (another module's)
            analyses._ANALYSES.clear()
            analyses._ANALYSES.update({**before, **{k: a for k, a in now.items() if k not in before}})


def _run_plugin(p, path: Path, spec, module) -> None:
    """Execute a plugin file; its failure as one CljaxError line (where, and what)."""
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:  # the plugin's own errors at import: where and what, in one line
        where = f"line {exc.lineno}: " if exc.lineno else ""
        raise CljaxError(f"plugin file {p} is not valid Python ({where}{exc.msg}): fix it, or leave it out of "
                         f"--plugin / ${PLUGINS_ENV}.") from None
    except ModuleNotFoundError as exc:  # a package the environment lacks, not a bug in the plugin
        if exc.name is None or exc.name.split(".")[0] == "cljax":
            raise
        raise CljaxError(f"plugin file {p} imports {exc.name!r}, which is not installed here: install it (pip "
                         f"install) in this Python, or leave the file out of --plugin / ${PLUGINS_ENV}.") from None
    except CljaxError:  # cljax's own refusal (a name taken twice, a bad param): already one line
        raise
    except (Exception, SystemExit) as exc:  # a bug in the plugin (sys.exit too): where in its file, and what
        frame = _last_plugin_frame(exc, {str(path)})
        where = f"line {frame.lineno}: " if frame else ""
        raise CljaxError(f"plugin file {p} raised {type(exc).__name__} when imported ({where}{exc}): fix it, or "
                         f"leave it out of --plugin / ${PLUGINS_ENV}.") from None


def plugin_error(exc: BaseException) -> str | None:
    """One line for an exception raised in a loaded plugin file's code (a hook, a builder, a
    loader, traced or not): the file, the line of its own that raised, the exception; None when
    no frame of a plugin file is in its traceback (cljax's own bug keeps its traceback)."""
    frame = _last_plugin_frame(exc, _loaded_plugins)
    if frame is None:
        return None
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return (f"plugin file {frame.filename} raised {type(exc).__name__} at line {frame.lineno}"
            f"{f' ({text})' if text else ''}: fix it, or leave it out of --plugin / ${PLUGINS_ENV}.")


def plugin_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of ``exc``'s traceback in a loaded plugin file, or None."""
    return _last_plugin_frame(exc, _loaded_plugins)


def _last_plugin_frame(exc: BaseException, paths) -> traceback.FrameSummary | None:
    """The innermost frame of ``exc``'s traceback in one of the files ``paths`` (resolved), or None."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename and str(Path(f.filename).resolve()) in paths]
    return frames[-1] if frames else None


# The CNN's convolution lowerings (cljax.models.cnn has a code path for each): a closed list, kept
# here, free of jax, so that the config and the benchmarks' flags offer the same names.
CONV_IMPLS = ("lax", "im2col", "fused", "fused-im2col")
AUTO_CONV_IMPL = "im2col"  # what --conv-impl auto runs, on every backend (cljax.models.resolve_conv_impl)

RULES = Registry("rule", "cljax.rules", setting="algorithm")
OPTIONS = Registry("option", "cljax.options")
MODELS = Registry("model", "cljax.models", setting="model")
DATASETS = Registry("dataset", "cljax.datasets", setting="dataset")

register_rule = RULES.register
register_option = OPTIONS.register
register_model = MODELS.register
register_dataset = DATASETS.register


def default_lr(rule: str) -> float:
    """A rule's own learning rate (``register_rule(..., default_lr=)``), used where --lr is not given."""
    return RULES[rule].extra.get("default_lr", 0.05)


def reads_conv_impl(model: str) -> bool:
    """Whether the model convolves: one registered with ``ignores=("conv_impl",)`` (the MLP) records
    the backend's lowering all the same, which its program never uses."""
    return "conv_impl" not in ignored_settings({"model": model})


def ignored_settings(flat: dict) -> dict[str, str]:
    """Setting -> the entry that never reads it ("model mlp"): the ``ignores=`` of the rule, model
    and dataset the flat settings choose (those loaded here)."""
    out: dict[str, str] = {}
    for kind, setting, registry in (("rule", "algorithm", RULES), ("model", "model", MODELS),
                                    ("dataset", "dataset", DATASETS)):
        name = flat.get(setting)
        if isinstance(name, str) and name in registry:
            out.update(dict.fromkeys(registry[name].extra.get("ignores", ()), f"{kind} {name}"))
    return out
