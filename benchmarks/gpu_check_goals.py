"""The first section of ``make gpu-check``'s summary: the GPU goals as measured, and the one
second call the session's device time leaves room for.

A GPU session has 15 minutes of device time, the machine's start included; the check takes at
most 8 of them, which leaves about one short second call. Which one is read from the report, in
this order:

1. a candidate: a variant at R = 128 that the check's own flag ``--conv-impl`` can select and
   that ran at least ``FASTER`` times the default's samples/s. The second call times it as a user
   would run it: its profile and its table against the torch peers at R = 128 and 512
   (``--stages profile throughput_large`` with its flag);
2. otherwise, if the default's results changed from call to call or from compile to compile,
   ``--stages deterministic``: whether the lowerings compile and repeat their bits under XLA's
   deterministic ops;
3. otherwise the other GPU-relevant tests (``--stages tests --tests rest``).

bfloat16 and ``--matmul-precision default``/``high`` are reported but never proposed: they change
the numbers by design and stay options (the precision default was decided on an H200,
docs/benchmark.md, "Measured on an H200"); a lowering changes only the rounding.
"""

from __future__ import annotations

GOAL_SAMPLES_PER_S = 10e6  # at R >= 128, batch 32, one H200
GOAL_VS_TORCH_VMAP = 25.0  # cljax / the torch.func vmap peer at R = 32
FASTER = 1.05  # a candidate's speed over the default at the same R, so that timing noise alone picks none
CANDIDATE_SETTINGS = {"conv_impl": "--conv-impl"}  # lowerings only: settings that change numbers are reported
REST_TESTS_CALL = "--stages tests --tests rest --limit tests=180"


def _result(report: dict, stage: str) -> dict | None:
    return (report.get("stages", {}).get(stage) or {}).get("result")


def _cljax_rows(report: dict) -> list[dict]:
    """cljax's throughput rows, each with its stage and, when a time limit cut it short, what the
    partial figures are (throughput.py writes them as it goes)."""
    return [{**row, "stage": stage, "partial": (_result(report, stage) or {}).get("partial")}
            for stage in ("throughput", "throughput_large")
            for row in (_result(report, stage) or {}).get("rows", []) if row.get("impl") == "cljax"]


def _partial(row: dict) -> str:
    return f"; partial figures: {row['partial']}" if row.get("partial") else ""


def _variant_rows(report: dict) -> list[dict]:
    return [row for row in (_result(report, "variants") or {}).get("rows", []) if "error" not in row]


def candidate(report: dict) -> dict | None:
    """The fastest R = 128 variant the check's flags can select, when at least FASTER x the default."""
    rows = [row for row in _variant_rows(report) if row["repeats"] == 128 and row["settings"]
            and set(row["settings"]) <= set(CANDIDATE_SETTINGS) and row.get("speed_vs_default", 0) >= FASTER]
    return max(rows, key=lambda row: row["speed_vs_default"], default=None)


def bits_moved(report: dict) -> list[str]:
    """The default's rows whose results were not the same bits twice: run to run, compile to compile."""
    moved = []
    for row in _variant_rows(report):
        if row["variant"] == "default" and row.get("run_to_run_max_diff", 0) > 0:
            moved.append(f"the default at R = {row['repeats']}, run to run ({row['run_to_run_max_diff']:.1e})")
        if row["variant"] == "default, compiled again" and row.get("max_weight_diff_relative_to_max_weight", 0) > 0:
            moved.append(f"the default compiled again at R = {row['repeats']} "
                         f"({row['max_weight_diff_relative_to_max_weight']:.1e} of the largest weight)")
    return moved


def next_call(report: dict) -> tuple[str, str]:
    """(GPU_CHECK_ARGS of the second call, why)."""
    best = candidate(report)
    if best:
        flags = " ".join(f"{CANDIDATE_SETTINGS[k]} {v}" for k, v in sorted(best["settings"].items()))
        return (f"--stages profile throughput_large {flags}",
                f"'{best['variant']}' ran {best['speed_vs_default']:.2f}x the default's samples/s at R = 128")
    moved = bits_moved(report)
    if moved:
        return "--stages deterministic", "not the same bits twice: " + "; ".join(moved)
    return REST_TESTS_CALL, "no variant the check can select beat the default, and its bits repeated"


def goals_markdown(report: dict) -> list[str]:
    """The goals' lines and the proposed second call (what was not measured says so)."""
    rows = _cljax_rows(report)
    large = [row for row in rows if row["repeats"] >= 128]
    lines = []
    if large:
        top = max(large, key=lambda row: row["samples_per_s"])
        met = "met" if top["samples_per_s"] >= GOAL_SAMPLES_PER_S else "not met"
        lines.append(f"- {GOAL_SAMPLES_PER_S / 1e6:.0f}M samples/s at R >= 128: **{met}**, "
                     f"{top['samples_per_s']:,.0f} at R = {top['repeats']} ({top['stage']}{_partial(top)})")
    else:
        lines.append(f"- {GOAL_SAMPLES_PER_S / 1e6:.0f}M samples/s at R >= 128: not measured "
                     "(no throughput row at R >= 128)")
    at32 = next((row for row in rows if row["repeats"] == 32), None)
    ratio = (at32 or {}).get("ratio_vs_peer", {}).get("torch_vmap")
    if ratio:
        met = "met" if ratio >= GOAL_VS_TORCH_VMAP else "not met"
        lines.append(f"- {GOAL_VS_TORCH_VMAP:.0f}x the torch.func vmap peer at R = 32: **{met}**, {ratio:.1f}x"
                     f"{' (' + _partial(at32)[2:] + ')' if at32.get('partial') else ''}")
    else:
        lines.append(f"- {GOAL_VS_TORCH_VMAP:.0f}x the torch.func vmap peer at R = 32: not measured")
    tests = _result(report, "tests")
    if tests:
        failed = tests["failures"] + tests["errors"]
        unfinished = (tests.get("ids") or {}).get("not_finished", 0)
        lines.append(f"- GPU-relevant tests: {tests['tests']} run, {failed} failed"
                     + (" (fix these before any second call: " + ", ".join(f"`{n}`" for n in tests["failed"]) + ")"
                        if failed else "")
                     + (f", {unfinished} not finished (listed with the failed in tests_left.txt)" if unfinished else ""))
    faster = sorted((row for row in _variant_rows(report)
                     if row["settings"] and row.get("speed_vs_default", 0) >= FASTER),
                    key=lambda row: -row["speed_vs_default"])
    if faster:
        lines.append("- faster than the default at their R: " + "; ".join(
            f"{row['variant']} at R = {row['repeats']} {row['speed_vs_default']:.2f}x "
            f"(train acc differs by at most {row.get('max_train_acc_diff', float('nan')):.1e})" for row in faster))
    if _result(report, "variants") is None:
        return lines + ["", "No variants result to choose a second call from."]
    args, why = next_call(report)
    lines += ["", f"Second call, if the device time allows (about 4 minutes with the start): "
                  f'`make gpu-check ... GPU_CHECK_OUT=<another folder> GPU_CHECK_ARGS="{args}"`, because {why}.']
    done = report.get("follow_up")
    if done and "args" in done:
        ran = ", ".join(f"{k} {v}" for k, v in done["stages"].items() if v != "skipped")
        lines.append(f"It ran in this call as its follow-up (`--follow-up`): {ran}; all ok: {done['all_ok']}; "
                     f"its summary: {done['out']}/summary.md.")
    elif done:
        lines.append(f"No follow-up ran: {done['skipped']}.")
    return lines
