"""What a change of cljax since a run began changed in what the run computes: such a run is
not resumed by this cljax (its later tasks would follow another rule than its first ones). A
change that alters numbers bumps config.SCHEMA_VERSION, recorded in run.json; one made without
a bump is told apart by the files the run's task folders hold."""

from __future__ import annotations

from pathlib import Path

from cljax.check_record import checked_metadata
from cljax.errors import CljaxError, DamagedFile
from cljax.results import task_dirs


def changed_since(record: dict, algo_dir: Path | None = None, memo: dict | None = None) -> str | None:
    """What a change of cljax since the run's record (its ``schema``, config.SCHEMA_VERSION, or
    its task folders in ``algo_dir``; ``memo``: the command's check record, which parses each
    metadata.json once) changed in what the run computes, or None. A run that one of these touches
    is not resumed: a finished one is left as it is."""
    schema, settings = record.get("schema") or 1, record["config"]
    if settings.get("add_plasticity") and settings.get("sp_mode", "boundary") == "boundary" \
            and _before_start_weights(algo_dir, memo):
        return ("its task-start accuracy and loss (start_test_acc, start_test_loss) were measured before "
                "shrink+perturb acted at each task's start; since 2026-12-01 (when task folders gained "
                "start_weights.npy) they are measured after it, so its later tasks would hold the other meaning")
    conv = ((record.get("split") or {}).get("lowering") or {}).get("conv", settings.get("conv_impl", "auto"))
    if (schema < 3 and settings.get("algorithm") == "Bio" and settings.get("model", "cnn") == "cnn"
            and conv in ("auto", "im2col", "fused-im2col")):
        where = (f"the CNN's {conv} lowering" if conv != "auto" else
                 "the CNN's im2col lowering (the CPU's default; the run records no lowering)")
        return (f"its Bio rule, in {where}, sent the error through the max-pool winners of the feedback weights "
                f"instead of the forward pass's (corrected in schema 3; docs/rules.md, Bio)")
    if schema < 4 and settings.get("use_cbp"):
        return ("its continual backprop ranked units by a utility not corrected for their age, so units that had just "
                "matured were replaced first (corrected in schema 4; docs/methods.md, CBP)")
    if schema < 4 and settings.get("model") == "resnet" and settings.get("use_replay"):
        return ("its ResNet's BatchNorm counted the replay buffer's empty slots in its batch statistics during the first "
                "task (corrected in schema 4; docs/rules.md, the rule contract)")
    if schema < 4 and settings.get("model") == "resnet" and settings.get("add_plasticity") \
            and settings.get("sp_noise", "init") == "init":
        return ("its shrink+perturb added sigma to every BatchNorm scale at each perturbation instead of keeping its size "
                "(corrected in schema 4; cljax/options/shrink_perturb.py)")
    return None


def _before_start_weights(algo_dir: Path | None, memo: dict | None) -> bool:
    """Whether the run's first readable task folder (the oldest: folders are written in order) was
    written before task folders held start_weights.npy (2026-12-01): its metadata.json lists no
    such file (or, older still, lists none and it is not there). A listed file that is lost is
    damage, which the folder checks send to --repair; a damaged folder is passed over, or a
    repair of it would finish an older run with today's code."""
    for folder in task_dirs(algo_dir, passed=False) if algo_dir is not None else []:
        try:
            files = checked_metadata(folder, memo).get("files")
        except (DamagedFile, OSError):
            continue
        if isinstance(files, dict):
            return "start_weights.npy" not in files
        return not (folder / "start_weights.npy").exists()  # a folder from before its files were listed
    return False


def older_cljax(algo_dir: Path, changed: str, deletes: str, damaged: str | None = None) -> CljaxError:
    """The refusal of a run that ``changed_since`` names a change for; ``deletes``: what
    --overwrite deletes there; ``damaged``: a task folder it had trained past that is damaged or
    missing (no cljax that ran the older rule can write it again: none had --repair)."""
    if damaged:
        return CljaxError(f"{algo_dir} holds a run started by an older cljax, and {changed}: this cljax would write "
                          f"its damaged or missing {damaged} again by the corrected rule, not the one its other tasks "
                          f"followed. Restore {damaged} from a copy, pass --overwrite to train the run again (it "
                          f"{deletes}), or choose another --results-dir.")
    return CljaxError(f"{algo_dir} holds a run started by an older cljax, and {changed}: its remaining tasks would "
                      f"follow another rule than its first ones. Finish it with the cljax it started with, pass "
                      f"--overwrite to train it again (it {deletes}), or choose another --results-dir.")
