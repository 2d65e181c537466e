"""The plugin files a run's rule, model, dataset and options come from.

A run records, in run.json (``sources``) and in every task's metadata.json (``plugins``), the
file and the sha256 of its content for each entry it uses that a plugin file registered (an
entry of cljax itself changes only with cljax, which the record's ``schema`` covers). A resume
recomputes them and refuses a run whose plugin file changed: the remaining tasks would run other
code than the first ones, under the same settings. The plugin file itself is hashed, not the
modules it imports.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cljax.errors import CljaxError
from cljax.registry import DATASETS, MODELS, OPTIONS, RULES, is_builtin, source_file


def used_entries(config) -> dict:
    """"kind name" -> Entry of every entry the config uses."""
    used = {f"rule {config.algorithm}": RULES[config.algorithm], f"model {config.model}": MODELS[config.model],
            f"dataset {config.dataset}": DATASETS[config.dataset]}
    used.update({f"option {name}": OPTIONS[name] for name, _ in config.option_params})
    return used


def plugin_sources(config) -> dict:
    """"kind name" -> {"file", "sha256"} of the entries the config uses that plugin files registered."""
    out = {}
    for key, entry in used_entries(config).items():
        if not is_builtin(entry.build):
            path = source_file(entry.build)
            out[key] = {"file": path, "sha256": _sha256(Path(path))}
    return out


def check_sources(recorded: dict | None, config, algo_dir: Path) -> None:
    """One CljaxError line when a plugin file the run was started with has changed since, or an
    entry moved between cljax and a plugin. A record without ``sources`` (written before they
    were recorded) is not compared."""
    if recorded is None:
        return
    now = plugin_sources(config)
    for key in sorted(set(recorded) | set(now)):
        old, new = recorded.get(key), now.get(key)
        if old is not None and new is not None and old.get("sha256") == new["sha256"]:
            continue
        if old is None:
            what = f"its {key} was cljax's own and now comes from {new['file']}"
        elif new is None:
            what = f"its {key} came from {old.get('file')} and is now cljax's own"
        else:
            what = f"the file of its {key}, {new['file']}, changed since the run started (it was {old.get('file')})"
        raise CljaxError(f"{algo_dir} holds a run whose remaining tasks would run other code: {what}. Restore the "
                         f"file the run started with, choose another --results-dir, or pass --overwrite to start again.")


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise CljaxError(f"plugin file {path} cannot be read ({exc.strerror}): fix its permissions.") from None
