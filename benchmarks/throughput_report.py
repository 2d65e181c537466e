"""The markdown tables of benchmarks/throughput.py's report: cljax at each R with its
alternatives and the torch reference, then cljax against every torch peer (torch_peers.py)."""

from __future__ import annotations


ALTERNATIVE_LABELS = {"cljax_vmap": "repeats by vmap", "cljax_loop": "repeats looped", "cljax_1device": "1 CPU device",
                      "cljax_other_pairing": "learner/expert paired <-> separate"}


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
        f"precision {report.get('matmul_precision', '?')}, median)",
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
    return "\n".join(lines + notes)
