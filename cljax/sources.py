"""The files a run's rule, model, dataset and options come from.

A run records, in run.json (``sources``) and in every task's metadata.json (``plugins``), the
file and the sha256 of its content for each entry it uses. An entry a plugin file registered is
recorded by its path; one of cljax's own (a file in the package, which a researcher may have
added or edited there) by its path in the package, marked ``"cljax": true``. A resume recomputes
them: a changed plugin file refuses the run, since its remaining tasks would run other code
than its first ones under the same settings; a changed file of cljax's own is named in a
warning, since a cljax update changes them too (a change of what the settings compute is
refused by the record's ``schema``). An entry that moved between a plugin file and the package
with the same content is the same code. The entry's file itself is hashed, not the modules it
imports.
"""

from __future__ import annotations

from pathlib import Path

import cljax
from cljax.errors import CljaxError
from cljax.registry import DATASETS, MODELS, OPTIONS, RULES, is_builtin, loaded_plugin_sha256, source_file
from cljax.safe_files import file_sha256

_PACKAGE_ROOT = Path(cljax.__file__).resolve().parent.parent


def used_entries(config) -> dict:
    """"kind name" -> Entry of every entry the config uses."""
    used = {f"rule {config.algorithm}": RULES[config.algorithm], f"model {config.model}": MODELS[config.model],
            f"dataset {config.dataset}": DATASETS[config.dataset]}
    used.update({f"option {name}": OPTIONS[name] for name, _ in config.option_params})
    return used


def entry_sources(config) -> dict:
    """"kind name" -> {"file", "sha256"} of every entry the config uses (cljax's own also
    ``"cljax": True``, its file relative to the package's folder)."""
    out = {}
    for key, entry in used_entries(config).items():
        path = Path(source_file(entry.build))
        if not is_builtin(entry.build):
            out[key] = {"file": str(path), "sha256": entry_file_sha256(path)}
        elif path.is_file():
            out[key] = {"file": str(path.resolve().relative_to(_PACKAGE_ROOT)), "sha256": entry_file_sha256(path), "cljax": True}
    return out


def check_sources(recorded: dict | None, config, algo_dir: Path) -> list[str]:
    """One CljaxError line when a plugin file the run was started with has changed since, or an
    entry moved between cljax and a plugin with other content; the warnings to print for files of
    cljax's own that changed. A record without ``sources`` (written before they were recorded)
    is not compared, nor an entry of cljax's own that a record from before they were recorded
    leaves out."""
    if recorded is None:
        return []
    now, warnings = entry_sources(config), []
    for key in sorted(set(recorded) | set(now)):
        old, new = recorded.get(key), now.get(key)
        old_own, new_own = old is None or bool(old.get("cljax")), new is None or bool(new.get("cljax"))
        if old is None and new_own or new is None and old_own:  # not recorded then (or not a file now)
            continue
        if old is not None and new is not None and old.get("sha256") == new["sha256"]:
            continue
        if old_own and new_own:
            warnings.append(f"warning: the file of its {key}, {new['file']}, changed since the run started (a cljax "
                            f"update or an edit): the tasks this command trains run the new code; each task's "
                            f"metadata.json records the file's sha256.")
            continue
        if old is None or old_own:
            then = f" ({old.get('file')}, of other content)" if old else ""
            what = f"its {key} was cljax's own{then} and now comes from {new['file']}"
        elif new is None or new_own:
            now_at = f" ({new['file']}, of other content)" if new else ""
            what = f"its {key} came from {old.get('file')} and is now cljax's own{now_at}"
        else:
            where = "" if new["file"] == old.get("file") else f" (it was {old.get('file')})"
            what = f"the file of its {key}, {new['file']}, changed since the run started{where}"
        raise CljaxError(f"{algo_dir} holds a run whose remaining tasks would run other code: {what}. Restore the "
                         f"file the run started with, choose another --results-dir, or pass --overwrite to start again.")
    return warnings


def entry_file_sha256(path: Path) -> str:
    """The sha256 of the file an entry (or an analysis) comes from; one line when it cannot be
    read, or when a plugin file was edited after this process imported it (in a notebook: the
    code that runs is still the imported one, and the record would name the edited file)."""
    imported = loaded_plugin_sha256(path)
    if imported is not None:
        try:
            now = file_sha256(path)
        except OSError:  # gone or unreadable since: the code imported is what runs
            return imported
        if now != imported:
            raise CljaxError(f"plugin file {path} changed since this process imported it: what would run is the code "
                             f"imported, and the run would record the file; restore the file, or run in a new process "
                             f"(restart the notebook's kernel) to use the edited one.")
        return imported
    try:
        return file_sha256(path)
    except OSError as exc:
        raise CljaxError(f"plugin file {path} cannot be read ({exc.strerror}): fix its permissions.") from None


def plugins_not_loaded(record: dict) -> str | None:
    """For a run.json whose settings this process cannot read: the plugin files it was trained
    with that are not loaded now, as the end of an error line (how to load them); None when
    there are none (then the record is another cljax's)."""
    from cljax.registry import loaded_plugins

    sources = record.get("sources") if isinstance(record, dict) else None
    files = sorted({s["file"] for s in (sources or {}).values() if isinstance(s, dict) and isinstance(s.get("file"), str)
                    and not s.get("cljax")} - set(loaded_plugins()))
    if not files:
        return None
    flags = " ".join(f"--plugin {f}" for f in files)
    return (f"it was trained with the plugin file{'s' if len(files) > 1 else ''} {', '.join(files)}, not loaded now: "
            f"pass {flags} (or name {'them' if len(files) > 1 else 'it'} in $CLJAX_PLUGINS)")
