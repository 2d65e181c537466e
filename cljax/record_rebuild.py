"""A run's lost run.json, written again from its task folders (``--repair``).

run.json holds what the task folders' metadata.json hold as well: the run id, the settings,
the identity of the data, the device split the run started on and the files of its entries.
A run whose run.json was deleted or lost can therefore be resumed once the record is rebuilt
from them: from task 0's metadata.json, or the first one readable. A folder written by a resume
records that command's settings: those a resume may change (they change no number, such as
--eval-batch-size) may then differ from the run's first command, and the note says so. The rebuilt record is checked like any other: its settings and data against
the command's (a resume with other ones is refused), every task folder and the checkpoint
against its run id. Task folders written before cljax recorded the data's identity in them
cannot rebuild it: the data would go unchecked.
"""

from __future__ import annotations

from pathlib import Path

from cljax.checkpoint import RUN_RECORD, read_checkpoint_header
from cljax.errors import CljaxError, DamagedFile
from cljax.results import load_metadata, task_dirs


def rebuilt_record(algo_dir: Path) -> dict:
    """run.json's content as the run's task folders record it; read only. CljaxError naming why
    it cannot be rebuilt: no readable folder, folders of several runs or data, a checkpoint of
    another run, or folders from before their metadata.json named the data."""
    lost = f"{algo_dir / RUN_RECORD} is missing"
    metas = []
    for folder in task_dirs(algo_dir, passed=False):
        try:
            metas.append(load_metadata(folder))
        except (DamagedFile, OSError):
            continue  # a damaged folder is one the repair writes anew
    if not metas:
        raise CljaxError(f"{lost}, and no task folder's metadata.json can be read to write it again")
    runs = sorted({str(m.get("run_id")) for m in metas})
    if len(runs) > 1:
        raise CljaxError(f"{lost}, and the task folders belong to {len(runs)} runs ({', '.join(runs[:3])}): "
                         f"the folder mixes runs, so which one it holds cannot be told")
    run_id = metas[0].get("run_id")
    first = min(metas, key=lambda m: m.get("task_index", 0) if isinstance(m.get("task_index"), int) else 0)
    if not isinstance(run_id, str) or "data" not in first:
        raise CljaxError(f"{lost}, and its task folders were written by a cljax that did not record the data's "
                         f"identity in them, so it cannot be written again from them")
    data = {m.get("data") if isinstance(m.get("data"), str) else repr(m.get("data")) for m in metas}
    if len(data) > 1 or not isinstance(first["data"], str):
        raise CljaxError(f"{lost}, and the task folders record {len(data)} data identities: the folder mixes runs")
    try:
        header = read_checkpoint_header(algo_dir)
    except CljaxError:
        header = None  # damaged: the repair's own checks name it
    if header is not None and header[1] != run_id:
        raise CljaxError(f"{lost}, and the checkpoint belongs to run {header[1]}, the task folders to run {run_id}: "
                         f"the folder mixes runs")
    fields = {"config": dict, "schema": int, "split": dict}
    for key, kind in fields.items():
        if not isinstance(first.get(key), kind) or isinstance(first.get(key), bool):
            raise CljaxError(f"{lost}, and {algo_dir / first.get('task_dir', '?') / 'metadata.json'} has no "
                             f"\"{key}\" to write it again from")
    split = first.get("split_at_run_start") or first["split"]  # a folder trained on another split names the first
    plugins = first.get("plugins")
    if not isinstance(split, dict) or not isinstance(plugins, (dict, type(None))):
        raise CljaxError(f"{lost}, and {algo_dir / first.get('task_dir', '?') / 'metadata.json'} is damaged (its "
                         f"split or plugins are not objects), so it cannot be written again from it")
    return {"schema": first["schema"], "config": first["config"], "run_id": run_id, "data": first["data"],
            "split": split, "sources": plugins, "dataset_meta": None,
            "rebuilt_from": first.get("task_index", 0)}


def lost_record(algo_dir: Path, n_dirs: int, repair: bool, deletes: str) -> dict:
    """The record of a run folder whose run.json is missing and which holds ``n_dirs`` task
    folders, rebuilt under ``repair``; otherwise (or when it cannot be) a CljaxError naming the
    fixes. ``deletes``: what --overwrite deletes there."""
    try:
        record = rebuilt_record(algo_dir)
    except CljaxError as exc:
        raise CljaxError(f"{str(exc).rstrip('.')}: restore run.json from a copy, or pass --overwrite to start "
                         f"again (it {deletes}).") from None
    if not repair:
        raise CljaxError(f"{algo_dir / RUN_RECORD} is missing, and the folder holds {n_dirs} task folder(s) of run "
                         f"{record['run_id']}: pass --repair to write it again from them (then the run is checked "
                         f"and resumed as usual), restore it from a copy, or pass --overwrite to start again (it "
                         f"{deletes}).")
    return record


def first_folder_metadata(algo_dir: Path, memo: dict | None = None) -> tuple[Path, dict] | None:
    """The first task folder whose metadata.json reads, and its content (``memo``: the check
    record's fields, cljax/check_record.py); None when no folder reads. Its settings and data are
    what the run trained with: run.json is checked against them."""
    from cljax.check_record import checked_metadata

    for folder in task_dirs(algo_dir, passed=False):
        try:
            meta = checked_metadata(folder, memo)
            # an entry of a verified.json saved before the checks kept "data" lacks it: read the file
            return folder, meta if "data" in meta or memo is None else load_metadata(folder)
        except (DamagedFile, OSError):
            continue  # a damaged folder: the folder checks name it
    return None


def foreign_record(algo_dir: Path, record: dict | None, memo: dict | None = None) -> str | None:
    """When run.json's run id is not the run's: task_000 and a second witness (the last task
    folder, or initial/) record one id and run.json another (another run's run.json copied in).
    The line names run.json, not the task folders that are the run's own; None otherwise."""
    rid = record.get("run_id") if isinstance(record, dict) else None
    first = first_folder_metadata(algo_dir, memo) if isinstance(rid, str) else None  # no run.json: nothing read
    if first is None or not isinstance(first[1].get("run_id"), str) or first[1]["run_id"] == rid:
        return None
    ids = {}
    for folder in (*task_dirs(algo_dir, passed=False)[-1:], algo_dir / "initial"):
        if folder != first[0]:
            try:
                ids[folder.name] = load_metadata(folder).get("run_id")
            except (CljaxError, OSError):
                continue
    agree = [name for name, other in ids.items() if other == first[1]["run_id"]]
    if not agree or rid in ids.values():
        return None
    return (f"{algo_dir / RUN_RECORD} records run {rid}, and the run's folders {first[0].name} and {' and '.join(agree)} "
            f"run {first[1]['run_id']}: run.json is another run's. Restore this run's run.json from a copy, or delete "
            f"it: `cljax analyze` and `cljax compare` read the task folders without it, and `cljax run` with the "
            f"run's flags and --repair writes it again from them")


def record_disagreement(algo_dir: Path, record: dict, memo: dict | None = None) -> str | None:
    """What run.json records otherwise than its run's first readable task folder (the settings
    that change numbers, the data), or None: a run.json changed by hand would let a resume train
    the rest of the run on other settings, each folder recording its own, without a word."""
    from cljax.setting_match import DATA_DIFFERS, recorded_config, setting_differences

    first = first_folder_metadata(algo_dir, memo)
    if first is None or first[1].get("run_id") != record.get("run_id") or not isinstance(first[1].get("config"), dict):
        return None  # another run's folder, or one before settings were recorded: the folder checks say so
    folder, meta = first
    try:
        differ = setting_differences(meta["config"], recorded_config(record["config"]).validate(), meta.get("data"),
                                     record.get("data"))
    except (CljaxError, TypeError, ValueError, KeyError, AttributeError):
        return None  # a record this cljax cannot read: the settings check says so
    if not isinstance(meta.get("data"), str) or not isinstance(record.get("data"), str):
        differ.pop(DATA_DIFFERS, None)
    if not differ:
        return None
    values = "; ".join(f"{k}: {new!r} in run.json, {old!r} in the folder" for k, (old, new) in differ.items()
                       if k != DATA_DIFFERS)
    return (f"{algo_dir / RUN_RECORD} records other {', '.join(differ)} than {folder / 'metadata.json'}, which the "
            f"run trained with{' (' + values + ')' if values else ''}")


def as_trained(algo_dir: Path, record: dict | None) -> dict | None:
    """``record`` (run.json) with the settings its run's first task folder records, those it
    trained with: a reader that pools or labels runs by their settings is not misled by a run.json
    changed by hand (a resume refuses such a record: ``record_disagreement``). Without a readable
    run.json (lost, or damaged), the first task folder's settings and run id, or None."""
    first = first_folder_metadata(algo_dir)
    if record is None:
        config = first[1].get("config") if first is not None else None
        return {"config": config, "run_id": first[1].get("run_id")} if isinstance(config, dict) else None
    if first is None or first[1].get("run_id") != record.get("run_id") or not isinstance(first[1].get("config"), dict):
        return record
    return {**record, "config": first[1]["config"]}
