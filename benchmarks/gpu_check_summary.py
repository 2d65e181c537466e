"""summary.md of benchmarks/gpu_check.py: one section per stage, from check.json's report."""

from __future__ import annotations

import json
from pathlib import Path


def _env(r: dict) -> list[str]:
    v = r.get("versions", {})
    lines = [f"- backend {r.get('backend')}, {len(r.get('devices', []))} device(s): {r.get('device_kind')}"
             + (f", {r['device_bytes_limit'] / 2**30:.1f} GiB usable by JAX" if r.get("device_bytes_limit") else ""),
             "- " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
             f"- torch device: {r.get('torch_device')}; nvidia-smi: {r.get('nvidia_smi')}"]
    if r.get("missing"):
        lines.append(f"- **missing**: {', '.join(r['missing'])} (install them in the image; this check installs nothing)")
    return lines


def _tests(r: dict) -> list[str]:
    lines = [f"- {r['tests']} run, {r['failures']} failed, {r['errors']} errors, {r['skipped']} skipped "
             + ("before the time limit stopped it (from tests.log)" if r.get("cut_short") else
                f"in {r['seconds']:.0f} s (junit.xml)") + "; pytest stops after --maxfail failures (1: -x)"]
    lines += [f"- failed: `{name}`" for name in r["failed"]]
    ids = r.get("ids")
    if ids:  # by exact node id (pytest_ids_now), where the log's lines split ids at their spaces
        lines.append(f"- by node id: {ids['collected']} collected, {ids['finished']} finished"
                     + (f"; the {ids['left']} that failed or did not finish are in {ids['left_file']}: run just "
                        f"those with `--stages tests --tests-from {ids['left_file']}` (the file copied into the "
                        f"checkout)" if ids["left"] else ""))
        absent = ids.get("not_collected") or []
        if absent:  # listed by --tests-from, not collected: renamed, or a file needing an extra this machine lacks
            shown = ", ".join(f"`{i}`" for i in absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            lines.append(f"- not collected, so not run: {len(absent)} of the ids --tests-from listed ({shown}); "
                         f"check the names against the suite, or install what their files import")
    return lines + ([f"- tracebacks, as they happened: {r['tracebacks']} (in logs.tar.gz)"] if r.get("tracebacks") else [])


def _variants(r: dict) -> list[str]:
    from gpu_variants import variants_markdown

    return variants_markdown(r)


def _deterministic(r: dict) -> list[str]:
    from gpu_variants import variants_markdown

    return [f"XLA_FLAGS: `{r.get('xla_flags')}`; compare the default's samples/s with the variants stage's.", "",
            *variants_markdown(r)]


def _profile(r: dict) -> list[str]:
    from profile_task import markdown

    return [markdown(r)]


def _throughput(r: dict) -> list[str]:
    from throughput_report import markdown

    return [f"R = {', '.join(str(R) for R in r['settings']['repeats'])}", "", markdown(r)]


def _run(r: dict) -> list[str]:
    secs = r["seconds_per_task"]
    later = secs[1:] or secs
    return [f"- R = {r['n_repeats']}, {r['epochs']} epoch(s), {r['steps_per_task']} steps per task; "
            f"{r['tasks_finished']} task(s) finished",
            f"- seconds per task: {', '.join(f'{s:.2f}' for s in secs)} (after the first: mean "
            f"{sum(later) / len(later):.2f}); compile {r['compile_seconds'] or 0:.1f} s",
            f"- wall seconds from one task's folder to the next (writes included): "
            f"{', '.join(f'{s:.2f}' for s in r.get('wall_seconds_between_tasks', [])) or 'one task only'}",
            f"- lowering: {json.dumps(r['lowering'])}"]


SECTIONS = {"env": ("Environment", _env), "tests": ("GPU-relevant tests", _tests),
            "variants": ("Precision, bfloat16 and lowering variants: speed and agreement", _variants),
            "profile": ("Profile of the task program", _profile),
            "throughput": ("Throughput: cljax against the torch peers, the smaller R", _throughput),
            "throughput_large": ("Throughput: cljax against the torch peers, the larger R", _throughput),
            "fashion": ("Fashion-MNIST run", _run), "lop": ("Loss-of-plasticity-shaped run (synthetic data)", _run),
            "deterministic": ("Under XLA's deterministic ops: compiles, speed, bits run to run", _deterministic)}


def summary_markdown(report: dict, out: Path) -> str:
    lines = [f"# cljax GPU check ({report['mode']})", "",
             f"started {report['started']}; budget {report['budget_seconds']:.0f} s; "
             + ("finished" if report["finished"] else "**in progress or cut short**")
             + (f"; all stages ok: {report['all_ok']}" if "all_ok" in report else "")
             + (f"; profile, throughput, fashion and lop ran with `{' '.join(report['program_flags'])}`"
                if report.get("program_flags") else ""), "",
             "| stage | status | seconds | limit |", "|---|---|---|---|"]
    for name, s in report["stages"].items():
        status = s["status"] + (f" ({s['why']})" if s.get("why") and s["status"] != "skipped" else "")
        lines.append(f"| {name} | {status} | {s.get('seconds', '')} | {s.get('limit_seconds', '')} |")
    lines += ["", "## Goals and the next call", ""]
    try:
        from gpu_check_goals import goals_markdown

        lines += goals_markdown(report)
    except (KeyError, TypeError, ValueError, ImportError) as exc:
        lines.append(f"(could not summarise: {exc!r}; see check.json)")
    for name, s in report["stages"].items():
        title, render = SECTIONS[name]
        lines += ["", f"## {title}", ""]
        if s.get("result"):
            try:
                lines += render(s["result"])
            except (KeyError, TypeError, ValueError, ZeroDivisionError, ImportError) as exc:
                lines.append(f"(could not summarise: {exc!r}; see check.json)")
        else:
            lines.append(f"no result ({s['status']}{': ' + s['why'] if s.get('why') else ''}; log: {s.get('log', '-')})")
        if s.get("log_tail"):
            lines += ["", "```", s["log_tail"][-1500:], "```"]
    return "\n".join(lines) + "\n"
