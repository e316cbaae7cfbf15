"""The report of benchmarks/serve_load.py: the issue's targets checked, the tables printed."""

from __future__ import annotations

STAGES = ("encode", "recall", "rank", "generate", "calibrate", "total", "http")
# Issue 29's bars: the served saturation at least this share of the in-process items/s, the open loop
# at half the saturation rate within this p99, one client within this p50.
TARGET_RATIO = 0.80
TARGET_OPEN_P99_MS = 100.0
TARGET_ONE_CLIENT_P50_MS = 20.0


def checks(report: dict) -> None:
    served, inproc = report["saturation"]["qps"], report["inprocess"]["items_per_s"]
    ratio = served / inproc if inproc else float("nan")
    p50, p99 = report["open"]["e2e_ms"]["p50"], report["open"]["e2e_ms"]["p99"]
    one = next((p for p in report["closed"] if p["clients"] == 1), None)
    report["checks"] = {
        "throughput_ratio": {
            "served_qps": served,
            "inprocess_items_per_s": inproc,
            "ratio": ratio,
            "target": TARGET_RATIO,
            "pass": ratio >= TARGET_RATIO,
        },
        "open_loop_tail": {
            "p50_ms": p50,
            "p99_ms": p99,
            "target_ms": TARGET_OPEN_P99_MS,
            "pass": p99 <= TARGET_OPEN_P99_MS and report["open"]["non_200"] == 0,
        },
        "one_client": {
            "p50_ms": one["e2e_ms"]["p50"] if one else None,
            "target_ms": TARGET_ONE_CLIENT_P50_MS,
            "pass": bool(one) and one["e2e_ms"]["p50"] <= TARGET_ONE_CLIENT_P50_MS,
        },
    }


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "| " + " | ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def print_report(report: dict) -> None:
    ms = lambda v: "" if v is None or v != v else f"{v:.0f}" if v >= 100 else f"{v:.1f}"  # noqa: E731
    s = report["settings"]
    deps = ", ".join(
        f"{d['name']} {d.get('ray_actor_options', {}).get('num_cpus', '?')} CPU"
        + (
            f" x{d['autoscaling_config'].get('min_replicas')}-{d['autoscaling_config'].get('max_replicas')}"
            if d.get("autoscaling_config")
            else f" x{d.get('num_replicas', 1)}"
        )
        for d in s["deployments"] or []
    )
    service = s["service"] or {}
    batching = ", ".join(
        f"{k} {v.get('max_batch_size')}/{v.get('batch_wait_timeout_s')}s"
        for k, v in service.items()
        if isinstance(v, dict) and "max_batch_size" in v
    )
    m = report["machine"]
    print()
    print(f"## serve_load: model {report['model']} ({report['inprocess']['engine']})")
    print(
        f"machine: {m['cpus']} CPUs, {m['cpu_model']}; load average start {m['loadavg_start']}, "
        f"end {m['loadavg_end']}"
    )
    print(
        f"llm: engine {s['llm'].get('engine')}, threads {s['llm'].get('threads')}, "
        f"batch {s['llm'].get('batch_size')}; in-process pipeline batch {s['pipeline_batch_size']}"
    )
    print(f"deployments: {deps}")
    print(f"serve batching (max size / wait): {batching}")
    print()
    header = ["phase", "n", "non-200", "items/s", "e2e p50", "e2e p99"]
    for stage in STAGES:
        header += [f"{stage} p50", f"{stage} p99"]
    ip = report["inprocess"]
    rows = [
        ["in-process", str(ip["items"]), "0", f"{ip['items_per_s']:.3f}", "", ""] + [""] * 2 * len(STAGES)
    ]
    phases = [(f"closed x{p['clients']}", p) for p in report["closed"]]
    phases += [(f"closed x{p['clients']}, {p['items']} items", p) for p in report.get("batched", [])]
    phases.append((f"open {report['open']['rate']:.3f}/s", report["open"]))
    for name, p in phases:
        row = [
            name,
            str(p["sent"]),
            str(p["non_200"]),
            f"{p['qps']:.3f}",
            ms(p["e2e_ms"]["p50"]),
            ms(p["e2e_ms"]["p99"]),
        ]
        for stage in STAGES:
            st = p["stages_ms"].get(stage, {})
            row += [ms(st.get("p50")), ms(st.get("p99"))]
        rows.append(row)
    print(table(rows, header))
    print(
        "(latencies in ms; stages from the ingress's timings_ms; http = end to end minus the ingress total)"
    )
    stages = ", ".join(f"{k} {v * 1000:.0f}" for k, v in ip["stage_s_per_item"].items())
    print(f"in-process ms/item (batched, so not comparable to per-request latencies): {stages}")
    for name, p in phases:
        if p["errors"]:
            print(f"{name} errors: {p['errors']}")
    for name, p in phases:
        if p.get("batches"):
            print(
                f"{name} batches formed: "
                + "; ".join(
                    f"{d} {b['batches']} (sizes {', '.join(f'{k}: {v}' for k, v in b['sizes'].items())})"
                    for d, b in p["batches"].items()
                )
            )
    if report["open"].get("delayed_by_cap"):
        print(f"open loop: {report['open']['delayed_by_cap']} arrivals waited for the outstanding cap")
    busy = [
        name
        for name, p in [("in-process", ip), *phases]
        if p.get("loadavg_end") and p["loadavg_end"][0] > 1.5 * m["cpus"]
    ]
    if busy:
        print(
            f"WARNING: the machine was busy (1-min load average > {1.5 * m['cpus']:.0f}) after: "
            f"{', '.join(busy)}; other processes shared the CPUs, so the ratios below are not clean"
        )
    if report.get("idle_memory_mib"):
        memory = report["idle_memory_mib"]
        total = sum(v for v in memory.values() if isinstance(v, float))
        print(f"idle replica memory (RSS MiB, after start-up): total {total:.0f}; {memory}")
    print()
    t, o, one = (report["checks"][k] for k in ("throughput_ratio", "open_loop_tail", "one_client"))
    sat = report["saturation"]
    print(
        f"target served/in-process >= {t['target']:.2f}: {'PASS' if t['pass'] else 'FAIL'} "
        f"({t['served_qps']:.3f} items/s at {sat['clients']} clients / {t['inprocess_items_per_s']:.3f} "
        f"items/s = {t['ratio']:.2f})"
    )
    print(
        f"target open-loop p99 <= {o['target_ms']:.0f} ms at {report['open']['rate']:.3f}/s: "
        f"{'PASS' if o['pass'] else 'FAIL'} (p99 {o['p99_ms']:.0f} ms, p50 {o['p50_ms']:.0f} ms, "
        f"non-200 {report['open']['non_200']})"
    )
    if one["p50_ms"] is not None:
        print(
            f"target 1 client p50 <= {one['target_ms']:.0f} ms: {'PASS' if one['pass'] else 'FAIL'} "
            f"(p50 {one['p50_ms']:.1f} ms)"
        )
