"""What two runs' settings share: the settings that change a run's numbers (``number_settings``,
``resume_key``), and a run's recorded settings against a config (``setting_differences``), as a
resume and ``cljax compare`` read them."""

from __future__ import annotations

import os
from typing import Any

from cljax.config import SPEED_ONLY, Config, setting_fields
from cljax.errors import CljaxError, DamagedFile
from cljax.registry import AUTO_CONV_IMPL, ignored_settings


def resume_key(config: Config, compare_data_dir: bool = True) -> dict[str, Any]:
    """What must match for a run to be resumed: the settings that change its numbers. Paths are
    compared by what they point to, speed-only settings not at all, nor a setting that does not
    act under the others (``param(applies_when=...)``); ``compare_data_dir`` False leaves out
    --data-dir too (the data is then compared by its content, see data_identity)."""
    key = number_settings(config.to_dict())
    # a layer rate given at --lr's value is an unset one (it follows --lr): the same numbers either way
    for dest in ("lr_features", "lr_classifier"):
        if key.get(dest) == config.lr_value:
            key[dest] = None
    if not compare_data_dir:
        key.pop("data_dir", None)
    elif key.get("data_dir"):
        key["data_dir"] = os.path.realpath(os.path.expanduser(key["data_dir"]))
    return key


def number_settings(flat: dict) -> dict:
    """The flat settings (``Config.to_dict``, or a run.json's config) that change a run's numbers:
    all but the speed-only ones and those that do not act under the others."""
    key = {k: v for k, v in flat.items() if k not in SPEED_ONLY}
    for dest in ignored_settings(flat):  # never read by the chosen model or dataset (the MLP's conv_impl)
        key.pop(dest, None)
    if key.get("conv_impl") == "auto":  # one lowering, named either way (a run of im2col was refused as auto's)
        key["conv_impl"] = AUTO_CONV_IMPL
    for dest, f in setting_fields().items():
        when = f.metadata.get("applies_when")
        if when and key.get(when[0]) != when[1]:
            key.pop(dest, None)
    return key


def recorded_config(recorded: dict) -> Config:
    """A record's flat settings as this version reads them: a setting the record lacks takes the
    value it declares for older runs (``absent``), else today's default."""
    return Config.from_flat({**recorded, **absent_settings(recorded)})


def absent_settings(recorded: dict) -> dict[str, Any]:
    """The settings a record lacks that declare the value runs recorded before them ran with
    (``param(..., absent=...)``), at that value."""
    return {dest: f.metadata["absent"] for dest, f in setting_fields().items()
            if "absent" in f.metadata and dest not in recorded}


DATA_DIFFERS = "data (the dataset's contents differ)"


def setting_differences(recorded: dict, config: Config, recorded_data: str | None = None,
                        data: str | None = None) -> dict[str, tuple[Any, Any]]:
    """Setting name -> (recorded value, value in ``config``) for the settings that differ. A
    setting the record lacks takes the value it declares for older runs (``absent``), else
    today's default. With both data identities (``recorded_data`` from run.json, ``data`` of the
    data loaded now) the data is compared by content (:data:`DATA_DIFFERS` when it differs),
    else by --data-dir."""
    by_content = recorded_data is not None and data is not None
    if recorded.get("data_dir") == "":  # accepted before it was refused: it read the dataset's standard place
        recorded = {**recorded, "data_dir": None}
    try:
        old_config = recorded_config(recorded)
        old = resume_key(old_config, not by_content)
    except (CljaxError, TypeError, ValueError, AttributeError) as exc:
        raise CljaxError(f"the recorded settings cannot be read by this version of cljax "
                         f"({str(exc).rstrip('.')})") from None
    try:
        old_config.validate()  # a value no command could have given: the record was edited or damaged
    except CljaxError as exc:
        raise DamagedFile("run.json", f"records a setting no run could have ({str(exc).rstrip('.')})",
                          "restore it from a copy, or pass --overwrite to train the run again") from None
    new = resume_key(config, not by_content)
    conditional = {dest for dest, f in setting_fields().items() if "applies_when" in f.metadata}
    differ = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
              and (k in old and k in new or k not in conditional)}  # acting on one side only: its condition differs
    if by_content and recorded_data != data:
        differ[DATA_DIFFERS] = (recorded_data, data)
    return differ


def resume_differences(record: dict, config: Config, data: str | None) -> dict[str, tuple[Any, Any]]:
    """``setting_differences`` of a run's record (run.json) and ``config``, as a resume reads them:
    a --conv-impl that names the lowering the run computed with is none (``run_split.conv_as_ran``:
    a ResNet recorded before schema 5 ran ``lax`` whatever its record's --conv-impl)."""
    from cljax.run_split import conv_as_ran

    differ = setting_differences(record["config"], config, record.get("data"), data)
    if "conv_impl" in differ and config.conv_impl == conv_as_ran(record):
        del differ["conv_impl"]
    return differ


def differing_settings(recorded: dict, config: Config, recorded_data: str | None = None,
                       data: str | None = None) -> list[str]:
    """Names of the settings that differ, as :func:`setting_differences` reads them."""
    return list(setting_differences(recorded, config, recorded_data, data))
