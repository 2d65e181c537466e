"""The report of benchmarks/throughput.py: its rows from the measured medians, the writer of the
partial reports a run leaves as it goes, and the markdown tables: cljax at each R with its
alternatives and the torch reference, then cljax against every torch peer (torch_peers.py)."""

from __future__ import annotations

import json
from pathlib import Path


ALTERNATIVE_LABELS = {"cljax_vmap": "repeats by vmap", "cljax_loop": "repeats looped", "cljax_1device": "1 CPU device",
                      "cljax_other_pairing": "learner/expert paired <-> separate"}

ONE_PROCESS_LOOPS = ("torch", "torch_1thread", "torch_lean")  # "best torch": the fastest of these


def markdown(report: dict) -> str:
    by_r = {}
    for row in report["rows"]:
        by_r.setdefault(row["repeats"], {})[row.get("variant", row["impl"])] = row
    alt = {}  # variant -> R -> row
    for row in report["alternatives"]:
        alt.setdefault(row["variant"], {})[row["repeats"]] = row
    has_torch = any("torch" in v for v in by_r.values())
    head = ["R", "devices", "learner/expert", "cljax samples/s", "% of peak"]
    head += [f"cljax, {ALTERNATIVE_LABELS.get(name, name)}: samples/s (ratio)" for name in alt]
    if has_torch:
        head += ["torch samples/s (reference / 1 thread / lean loop)", "cljax / torch", "cljax / lean torch",
                 "cljax / best torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for R, impls in sorted(by_r.items()):
        c = impls["cljax"]
        cells = [str(R), str(c.get("devices", 1)), c.get("learner_expert", ""), f"{c['samples_per_s']:,.0f}",
                 f"{100 * c['fraction_of_peak']:.1f}%"]
        for rows in alt.values():
            a = rows.get(R)
            cells.append(f"{a['samples_per_s']:,.0f} ({a['ratio_vs_default']:.2f}x)" if a else "")
        if has_torch:
            t1 = impls.get("torch_1thread")
            cells += [f"{impls['torch']['samples_per_s']:,.0f} / " + (f"{t1['samples_per_s']:,.0f}" if t1 else "-")
                      + f" / {impls['torch_lean']['samples_per_s']:,.0f}",
                      f"{c['ratio_vs_torch']:.2f}x", f"{c['ratio_vs_lean_torch']:.2f}x", f"{c['ratio_vs_best_torch']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r["impl"] == "torch" for r in report["rows"]):
        from torch_peers import peers_table

        lines += ["", peers_table(report)]
    e = report.get("experiment")
    mib = 2**20
    notes = [
        "",
        f"machine: {report['machine']}; load average {report['load_average_start']} -> {report['load_average_end']}",
        f"peak: {report['peak_flops_per_s'] / 1e9:.1f} GFLOP/s (XLA float32 matmul {report['peak_matmul_size']}^2 at "
        f"precision {report.get('matmul_precision', '?')}, median)" + (
            "; a small matmul (--quick) runs below the machine's peak, so '% of peak' may pass 100%: "
            "--peak-size 4096 for the figure docs/benchmark.md gives" if report["peak_matmul_size"] < 4096 else ""),
        f"FLOPs per training sample: {report['flops_per_sample'] / 1e6:.2f} M ({report['flops_formula']})",
        f"cljax settings: --matmul-precision {report.get('matmul_precision', 'the config default')}, "
        f"--conv-impl {report.get('conv_impl', 'auto')}",
        "compile seconds of the task program: " + ", ".join(f"R={r['repeats']}: {r['compile_seconds']:.1f}" for r in report["rows"] if r["impl"] == "cljax"),
    ]
    if e:
        stats1, stats10 = e["device_memory_stats_after_task_1"], e["device_memory_stats_after_task_10"]
        notes += [
            f"10-task synthetic run (R={e['config']['n_repeats']}): compilations after task 1 / task 10: "
            f"{e['compilations_after_task_1']} / {e['compilations_after_task_10']} (warm cache: {e['compilations_warm_cache']}); "
            f"compile {e['compile_seconds_cold']:.1f} s cold, {e['compile_seconds_warm']:.1f} s warm",
            f"host RSS after task 1 / 10: {e['rss_bytes_after_task_1'] / mib:.0f} / {e['rss_bytes_after_task_10'] / mib:.0f} MiB; "
            f"live device arrays: {e['device_bytes_live_after_task_1'] / mib:.1f} / {e['device_bytes_live_after_task_10'] / mib:.1f} MiB; "
            "device memory_stats: " + ("n/a (not reported by this backend)" if stats1 is None else
                                       f"{stats1.get('bytes_in_use', 0) / mib:.1f} / {stats10.get('bytes_in_use', 0) / mib:.1f} MiB in use"),
        ]
    if report.get("partial"):  # written before the run ended: a time limit may have cut it short
        notes.append(f"**partial figures**: {report['partial']}; the run did not finish")
    return "\n".join(lines + notes)


def measured_rows(m: dict, seconds: dict) -> tuple[list[dict], list[dict]]:
    """The rows (the default cljax and the torch peers at each R) and the alternatives' rows, from
    the units measured so far (``seconds``: a unit's median seconds per call) and ``m``, what
    benchmarks/throughput.py built: samples per call, peers, variants, compile seconds, devices."""
    samples, peers, flops, repeats = m["samples"], m["peers"], m["flops"], m["repeats"]
    loop_default, compile_seconds, n_devices, paired = m["loop_default"], m["compile_seconds"], m["n_devices"], m["paired"]
    variants = m["variants"]
    peak = m["peak_flops_per_call"] / seconds["peak"]
    rows, alternatives = [], []
    # the R-independent peers (one repeat at a time)
    torch_sps = {name: samples[name] / seconds[name] for name in peers if isinstance(name, str) and name in seconds}
    loop_of = {name: loop for name, loop, _, _ in variants}
    for (name, R), n in ((k, v) for k, v in samples.items()
                         if isinstance(k, tuple) and k[0].startswith("cljax") and k in seconds):
        sps = n / seconds[(name, R)]
        loop = loop_of[name]
        row = {"impl": "cljax", "repeats": R, "samples_per_s": sps, "fraction_of_peak": sps * flops["train_flops"] / peak,
               "compile_seconds": compile_seconds[(name, R)], "seconds_per_call": seconds[(name, R)],
               "repeat_axis": "loop" if (loop_default if loop is None else loop) else "vmap",
               "devices": n_devices[(name, R)], "learner_expert": "paired" if paired[(name, R)] else "separate",
               "variant": name}
        if torch_sps:
            row["ratio_vs_torch"] = sps / torch_sps["torch"]
            row["ratio_vs_lean_torch"] = sps / torch_sps["torch_lean"]
            # the fastest of the three one-process loops the first table shows (not the K processes)
            row["ratio_vs_best_torch"] = sps / max(v for k, v in torch_sps.items() if k in ONE_PROCESS_LOOPS)
            # every peer at this R, in the same run: the one-repeat loops, K processes, vmap over R
            peer_sps = {**torch_sps, **({"torch_vmap": samples[("torch_vmap", R)] / seconds[("torch_vmap", R)]}
                                        if ("torch_vmap", R) in seconds else {})}
            row["ratio_vs_peer"] = {peer: sps / v for peer, v in peer_sps.items()}
        if name != "cljax":
            row["ratio_vs_default"] = sps * seconds[("cljax", R)] / samples[("cljax", R)]
        (rows if name == "cljax" else alternatives).append(row)
    for key, info in ((k, v) for k, v in peers.items() if k in seconds):
        name, at = (key, repeats) if isinstance(key, str) else (key[0], [key[1]])
        sps = samples[key] / seconds[key]
        for R in at:
            rows.append({"impl": "torch", "repeats": R, "samples_per_s": sps, **info,
                         "fraction_of_peak": sps * flops["train_flops"] / peak, "variant": name})
    return rows, alternatives


def partial_writer(json_path: str | None):
    """Writes each partial report to ``json_path`` (the final report replaces it), or None."""
    if not json_path:
        return None

    def write(report: dict) -> None:
        Path(json_path).write_text(json.dumps(report, indent=1, default=str))
        print(f"partial figures ({report['partial']}) written: {json_path}", flush=True)

    return write
