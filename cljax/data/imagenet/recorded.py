"""What a prepared folder's meta.json records of the preparation that wrote it, against what a
command asks for: a complete folder is "already prepared" only for the same source, splits and
preprocessing (`check_same_preparation`), and a damaged one is prepared again without
--overwrite only when it records this very preparation (`check_redo_allowed`). The default
splits take a validation split when the source has one: a folder prepared before a local
source had one is not "already prepared" once it has (that command would now make other data)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from cljax.data.imagenet.image_folder import SPLIT_DIR_NAMES
from cljax.data.imagenet.sources import DEFAULT_SPLIT_MAP, OUTPUT_SPLITS, find_parquet_files
from cljax.data.prepared import load_prepared
from cljax.errors import CljaxError


def recorded_source(source: str) -> str:
    """SOURCE as a plan, and so meta.json, records it (`plan_source`): an existing folder by its
    absolute resolved path, whatever its spelling; a hub name as given."""
    path = Path(source).expanduser().resolve()
    return str(path) if path.exists() else source


def check_same_preparation(out: Path, meta: dict, source: str, split_map: Mapping[str, str] | None, resample: str,
                           size: int, revision: str | None = None) -> None:
    """Raise CljaxError when the complete folder `out` (its meta.json `meta`) was prepared from
    another source or with other splits or preprocessing than asked for. Compared without
    planning the source, so a hub name needs no network to be found already prepared: a --revision
    is compared with the commit recorded only when it is one (40 hexadecimal digits; a branch or
    tag would need the hub to resolve it)."""
    recorded = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else {}
    asked = {"source": recorded_source(source), "--resample": resample, "size": size}
    held = {"source": meta.get("source"), "--resample": recorded.get("resample"), "size": recorded.get("size")}
    differ = [f"{k} {asked[k]}" for k in asked if held[k] != asked[k]]
    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision, re.ASCII) and meta.get("revision") != revision:
        differ.append(f"--revision {revision} (it records {meta.get('revision') or 'no commit'})")
    if not _same_splits(recorded.get("splits"), split_map):
        differ.append(f"--splits {as_flag(_expected_splits(split_map)[0])}")
    if differ:
        raise CljaxError(f"{out} holds a preparation of {held['source']} (--resample {held['--resample']}, --splits "
                         f"{as_flag(recorded.get('splits'))}), and this command asks for {', '.join(differ)}: pass "
                         f"--overwrite to prepare it again, or choose another --out (nothing was changed).")
    if split_map is None and recorded.get("splits") != _expected_splits(None)[0]:  # prepared without validation
        found = _validation_split_of(asked["source"])
        if found is not None:
            raise CljaxError(f"{out} was prepared from {held['source']} when it had no validation split (its test "
                             f"arrays are empty), and it has one now ({found}), which this command would prepare as "
                             f"the test arrays: pass --overwrite to prepare the folder again so, or --splits train to "
                             f"keep it as it is (nothing was changed).")


def _validation_split_of(source: str) -> str | None:
    """The validation split a local SOURCE folder holds now, as the default splits would take it
    (a parquet file of it, or a val/ folder of class folders with files), or None; a hub name is not asked
    (that would need the network)."""
    path = Path(source)
    if not path.is_dir():
        return None
    try:
        parquet = find_parquet_files(path)
    except CljaxError:  # a damaged set of files: the preparation's own refusal names it
        return None
    if parquet:
        return str(parquet["validation"][0].relative_to(path)) if "validation" in parquet else None
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and SPLIT_DIR_NAMES.get(p.name.lower()) == "validation"):
        if any(c.is_dir() and not c.name.startswith(".") and any(c.iterdir()) for c in folder.iterdir()):
            return f"{folder.name}/"
    return None


def check_redo_allowed(out: Path, source: str, split_map: Mapping[str, str] | None, resample: str, size: int,
                       revision: str | None = None) -> str | None:
    """Raise CljaxError unless the damaged (not loadable) prepared folder `out` may be prepared
    again without --overwrite: its meta.json must still record this source, splits and
    preprocessing, so that what is replaced is the same data. A folder whose meta.json cannot
    say what it holds (unreadable, or with no source) could hold hours of another preparation.
    Returns the hub commit it records (None: none), which the redo streams unless --revision
    names another: the name's main branch may have moved on since."""
    try:
        load_prepared(out)
        reason = f"{out} does not load"
    except CljaxError as exc:
        reason = str(exc).rstrip(".")
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("source"), str):
        raise CljaxError(f"{reason}, and its meta.json does not record what it was prepared from, so preparing it "
                         f"again could replace other data: pass --overwrite to prepare it again, or choose another "
                         f"--out (nothing was changed).")
    check_same_preparation(out, meta, source, split_map, resample, size, revision)
    return meta.get("revision") if isinstance(meta.get("revision"), str) else None


def _expected_splits(split_map: Mapping[str, str] | None) -> list[dict[str, list[str]]]:
    """The source splits of each output split that a preparation with `split_map` records: with
    the default map, a source without a validation split has an empty test split."""
    mapping = dict(DEFAULT_SPLIT_MAP if split_map is None else split_map)
    full = {dst: [src for src, d in mapping.items() if d == dst] for dst in OUTPUT_SPLITS}
    if split_map is not None:
        return [full]
    return [full, {dst: [src for src in full[dst] if src == "train"] for dst in OUTPUT_SPLITS}]


def _same_splits(recorded, split_map: Mapping[str, str] | None) -> bool:
    if not isinstance(recorded, dict):
        return False
    # An output split no source split went to may be absent from the record.
    recorded = {dst: recorded.get(dst, []) for dst in OUTPUT_SPLITS} if set(recorded) <= set(OUTPUT_SPLITS) else recorded
    return recorded in _expected_splits(split_map)


def as_flag(splits) -> str:
    """{"train": ["train"], "test": ["validation"]} -> "train validation:test", as --splits takes it."""
    if not isinstance(splits, dict):
        return "?"
    items = []
    for dst, sources in splits.items():
        for src in sources if isinstance(sources, list) else []:
            items.append("train" if src == dst == "train" else f"{src}:{dst}")
    return " ".join(items) or "none"
