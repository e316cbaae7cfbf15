"""Load on the served application next to the in-process pipeline: Serve's overhead, QPS and latency.

    python -m benchmarks.serve_load --model tiny|default [--store DIR] [--requests 64]
        [--concurrency 1,2,4,8] [--batched 4x32] [--open-rate auto|R] [--duration 300] [--url URL]

Steps, all in one run and on the same items (held-out BANKING77 test queries, shuffled with --seed, from
--data, else the bundled sample's queries; never train items):
  1. store      a copy of the sample store (data/sample/banking77 + its rules; cached:
                benchmarks/_stores.py) unless --store is given;
  2. in-process TaggingPipeline.tag_rows with the settings the Serve config gives its replicas
                (the config's `config` file merged with its `settings`, then --model): items/s, alone;
  3. deploy     the Serve config (default serve_config.cpu.yaml) on a private local Ray cluster, on
                127.0.0.1:--port, unless --url points at a running service;
  4. warm-up    a few requests, not measured;
  5. closed     per concurrency level, that many clients each send 1-item requests back to back,
                bounded by --requests and --duration: QPS (items/s), p50/p99 end to end and per stage
                (the ingress's timings_ms; `http` = end to end minus the ingress's total), non-200s;
                then --batched CLIENTSxITEMS: that many clients sending requests of that many items
                (items/s counts items; --requests items in all);
  6. open       Poisson arrivals at --open-rate (auto: half of the best closed-loop QPS), bounded by
                --requests, --duration and --max-outstanding (an arrival that finds the cap full waits
                and its latency counts from its scheduled time, so the wait is not hidden).
When it deployed the app, it also counts the batches each batching stage formed per phase (from
Serve's metrics on --metrics-port), and the replicas per deployment after each phase.
With a store whose route plan sends nothing to the LLM (a ranker store), the in-process step and the
served path are the ranker's. When it deployed the app it reads the Serve replicas' resident memory
once they are up and idle (before the load). Prints the tables and issue 29's bars (served saturation
>= 0.80 x in-process items/s; open-loop p99 <= 100 ms at half the saturation rate; one client p50 <=
20 ms), and writes everything to out/serve_load/<model>.json. Serve and Ray are shut down at the end
when this script started them.

    python -m benchmarks.serve_load --model tiny|default --burst 10,40 [--deadline-ms MS]

Burst mode (deadline-aware admission, llm4tag/service/admission.py) instead of steps 2, 5 and 6: after the
warm-up, a closed loop of --requests 1-item requests at 2 clients per Generator replica measures the
items/s the app sustains; the base is the number of such requests it can finish within the deadline
(items/s x deadline). Then, per multiplier, that many times the base 1-item requests are sent at once,
each with X-Deadline-Ms (default: the config's service.deadline_s): accepted (200) p50/p99, 503s and
504s with their p99 latency, other non-200s, and each Serve replica's resident memory before and after
(read from /proc through the actors' pids: this script and the app share the machine). Targets: accepted
p99 <= deadline, refusals' p99 <= 100 ms, no 5xx other than 503/504. Written to
out/serve_load/<model>-burst.json.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._paths import (
    OUT,
    REPO,
    SAMPLE,
    add_data_arguments,
    add_out_argument,
    add_rebuild_argument,
    add_seed_argument,
    benchmark_parser,
)
from benchmarks._serve_report import STAGES, checks, print_report


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    parser.add_argument("--model", default="tiny", help="tiny, default or a model folder")
    parser.add_argument("--config", default=str(REPO / "serve_config.cpu.yaml"), help="Serve config")
    parser.add_argument(
        "--store", help="a built store (default: a copy of the sample store in a temp folder)"
    )
    parser.add_argument("--url", help="measure a running service instead of deploying one")
    parser.add_argument("--requests", type=int, default=64, help="requests per load phase (default 64)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="closed-loop client counts")
    parser.add_argument("--batched", default="", help="closed loops of multi-item requests, e.g. 4x32")
    parser.add_argument("--open-rate", default="auto", help="open-loop arrivals/s, or auto (saturation/2)")
    parser.add_argument("--duration", type=float, default=300, help="seconds at most per phase")
    parser.add_argument("--max-outstanding", type=int, default=0, help="open loop (default 4 x max clients)")
    parser.add_argument("--warmup", type=int, default=4, help="unmeasured requests before measuring")
    parser.add_argument(
        "--inprocess-items", type=int, default=0, help="items for the in-process run (default --requests)"
    )
    parser.add_argument("--port", type=int, default=8130)
    parser.add_argument("--metrics-port", type=int, default=8131)
    add_seed_argument(parser, help="seed of the order of the queries (default 0)")
    add_out_argument(parser, OUT / "serve_load")
    add_data_arguments(parser)
    add_rebuild_argument(parser)
    parser.add_argument("--burst", help="burst mode: multipliers of the deadline's capacity, e.g. 10,40")
    parser.add_argument("--deadline-ms", type=int, help="burst mode: X-Deadline-Ms (default: deadline_s)")
    args = parser.parse_args(argv)
    if args.burst:
        try:
            args.burst = [int(m) for m in args.burst.split(",") if m.strip()]
            if not args.burst or min(args.burst) < 1:
                raise ValueError
        except ValueError:
            parser.error("--burst needs multipliers >= 1, e.g. 10,40")
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1 or args.requests < 1:
        parser.error("--concurrency needs client counts >= 1 and --requests >= 1")
    if args.open_rate != "auto":
        try:
            if float(args.open_rate) <= 0:
                raise ValueError
        except ValueError:
            parser.error("--open-rate must be 'auto' or a positive number")
    max_outstanding = args.max_outstanding or 4 * max(levels)
    try:
        args.batched = [tuple(int(n) for n in b.split("x")) for b in args.batched.split(",") if b.strip()]
        if any(len(b) != 2 or min(b) < 1 for b in args.batched):
            raise ValueError
    except ValueError:
        parser.error("--batched takes CLIENTSxITEMS, e.g. 4x32")

    from deployments.launch import load_serve_config

    config = load_serve_config(args.config)
    application = config["applications"][0]
    app_args = application.get("args") or {}
    overrides = {"llm": {"model": args.model}}
    settings = replica_settings(args.config, app_args, overrides)

    pool, source = query_pool(args.data / "banking77", args.seed)
    inprocess_n = args.inprocess_items or args.requests
    report: dict[str, Any] = {
        "model": args.model,
        "machine": machine(),
        "serve_config": str(Path(args.config).resolve()),
        "settings": {
            "llm": settings.llm.model_dump(),
            "encoder": settings.encoder.model_dump(),
            "pipeline_batch_size": settings.pipeline.batch_size,
            "service": app_args.get("service"),
            "deployments": application.get("deployments"),
        },
        "queries": {"source": source, "pool": len(pool), "seed": args.seed},
        "bounds": {
            "requests": args.requests,
            "duration_s": args.duration,
            "concurrency": levels,
            "max_outstanding": max_outstanding,
            "warmup": args.warmup,
        },
    }
    print(
        f"# machine: {report['machine']['cpus']} CPUs ({report['machine']['cpu_model']}), "
        f"load average {report['machine']['loadavg_start']}"
    )
    print(f"# queries: {len(pool)} from {source}")
    # The same items everywhere: in-process, each closed-loop level, the open loop (no stage caches
    # results across calls, write-back is off unless the config turns it on); warm-up items apart.
    warm = [pool[k % len(pool)] for k in range(args.warmup)]
    measured = [pool[(args.warmup + k) % len(pool)] for k in range(max(args.requests, inprocess_n))]

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        store = args.store or working_store(args.cache, args.rebuild, Path(tmp) / "store")
        report["store"] = str(Path(store).resolve())
        if not args.burst:
            report["inprocess"] = in_process(store, settings, warm, measured[:inprocess_n])
            ip = report["inprocess"]
            print(
                f"# in-process: {ip['items']} items in {ip['seconds']:.1f} s = {ip['items_per_s']:.3f} "
                f"items/s (pipeline batch {ip['batch_size']}, llm batch {settings.llm.batch_size}, "
                f"engine load {ip['load_s']:.1f} s)"
            )
        started_here = False
        try:
            if args.url:
                url = args.url.rstrip("/")
            else:
                from deployments.launch import deploy

                os.environ.pop("RAY_ADDRESS", None)  # a private local cluster, never someone else's
                clock = time.perf_counter()
                started_here = True
                url = deploy(
                    args.config,
                    port=args.port,
                    store=store,
                    settings=overrides,
                    metrics_port=args.metrics_port,
                )
                report["deploy_s"] = time.perf_counter() - clock
            from deployments.launch import wait_ready

            report["url"] = url
            report["readyz"] = wait_ready(url)
            print(
                f"# serving at {url}" + (f" (deployed in {report['deploy_s']:.1f} s)" if started_here else "")
            )
            report["replicas_start"] = replicas() if started_here else None
            if started_here:
                time.sleep(10)  # start-up done, nothing sent yet: the idle footprint
                report["idle_memory_mib"] = replica_memory()
            if args.burst:
                deadline_ms = args.deadline_ms or int(1000 * float(service_deadline(app_args)))
                report["burst"] = asyncio.run(
                    bursts(url, args, warm, pool, deadline_ms, generators(application))
                )
                return finish_burst(report, args)
            phases = asyncio.run(
                load(
                    url,
                    args,
                    levels,
                    max_outstanding,
                    warm,
                    measured[: args.requests],
                    lambda: replicas() if started_here else None,
                    BatchMeter(f"http://127.0.0.1:{args.metrics_port}/metrics" if started_here else None),
                )
            )
            report.update(phases)
        finally:
            if started_here:
                shutdown()
    report["machine"]["loadavg_end"] = os.getloadavg()
    checks(report)
    print_report(report)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(args.model).name}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"# wrote {path}")


# -- set-up


def replica_settings(config_path: str, app_args: dict, overrides: dict):
    """The settings every replica gets: as deployments.app.build_app makes them, then the override."""
    from llm4tag.config import Settings, load_settings

    base = Path(config_path).resolve().parent
    settings = Settings()
    if app_args.get("config"):
        path = Path(os.path.expandvars(os.path.expanduser(str(app_args["config"]))))
        settings = load_settings(path if path.is_absolute() else base / path)
    return settings.with_overrides(app_args.get("settings") or {}).with_overrides(overrides)


def query_pool(shared: Path, seed: int) -> tuple[list[dict], str]:
    from llm4tag.data import read_items

    path, split = shared / "items.jsonl.gz", "test"
    if not path.exists():
        path, split = SAMPLE / "banking77" / "queries.jsonl", None
    items = read_items(path, split=split).items
    pool = [{"id": i.id, "text": i.text} for i in items if "-train-" not in i.id]
    random.Random(seed).shuffle(pool)
    return pool, f"{path.relative_to(REPO.parent) if path.is_relative_to(REPO.parent) else path}" + (
        f" (split {split})" if split else ""
    )


def working_store(cache: Path, rebuild: bool, copy_to: Path) -> str:
    """A copy of the sample store for the served app (which may write into its store)."""
    from benchmarks._stores import sample_store

    return str(sample_store(cache, rebuild=rebuild, copy_to=copy_to))


def machine() -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def in_process(store: str, settings, warm: list[dict], measured: list[dict]) -> dict:
    """The reference: the whole pipeline in this process, in its configured batches, nothing else running."""
    from llm4tag.data import Item
    from llm4tag.pipeline import StageTimes, TaggingPipeline

    clock = time.perf_counter()
    pipeline = TaggingPipeline.open(store, settings)
    load_s = time.perf_counter() - clock
    to_items = lambda rows: [Item(id=r["id"], text=r["text"]) for r in rows]  # noqa: E731
    list(pipeline.tag_rows(to_items(warm)))
    pipeline.times = StageTimes()
    clock = time.perf_counter()
    rows = list(pipeline.tag_rows(to_items(measured)))
    seconds = time.perf_counter() - clock
    n = len(rows)
    result = {
        "items": n,
        "seconds": seconds,
        "items_per_s": n / seconds,
        "batch_size": settings.pipeline.batch_size,
        "load_s": load_s,
        "stage_s_per_item": {k: v / n for k, v in pipeline.times.seconds.items()},
        "engine": getattr(pipeline.engine, "name", None),
        "loadavg_end": os.getloadavg(),
    }
    del pipeline, rows
    gc.collect()
    return result


def replicas() -> dict | None:
    """Running replicas per deployment (Generator autoscales), read from Serve in this driver."""
    try:
        from ray import serve

        out = {}
        for app in serve.status().applications.values():
            for name, dep in app.deployments.items():
                out[name] = {str(k): v for k, v in dep.replica_states.items()}
        return out
    except Exception as exc:  # informative only
        return {"error": f"{type(exc).__name__}: {exc}"}


def shutdown() -> None:
    import ray
    from ray import serve

    clock = time.perf_counter()
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
    print(f"# Serve and Ray shut down in {time.perf_counter() - clock:.1f} s")


class BatchMeter:
    """Batches formed per stage, from the batch-size histograms on the metrics port: ours
    (`ray_llm4tag_batch_size`, Generator and Calibrator) and Serve's `ray_serve_actual_batch_size`
    (@serve.batch, the Encoder). Serve's _sum series is unreliable here (fractional, below the count),
    so batches are counted and binned by the histograms' buckets."""

    PATTERN = re.compile(
        r"^ray_(?:serve_actual_batch_size|llm4tag_batch_size)_(bucket|count)\{(.*)\} ([0-9.eE+-]+)$"
    )

    def __init__(self, url: str | None):
        self.url = url
        self.last = self.scrape() if url else {}

    def scrape(self) -> dict:
        import urllib.request

        counts: dict[str, dict[str, float]] = {}
        try:
            with urllib.request.urlopen(self.url, timeout=10) as response:
                text = response.read().decode()
        except Exception:
            return {}
        for line in text.splitlines():
            match = self.PATTERN.match(line)
            if not match:
                continue
            kind, labels, value = match.groups()
            tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            key = "count" if kind == "count" else tags.get("le", "?")
            per = counts.setdefault(tags.get("deployment", "?"), {})
            per[key] = per.get(key, 0.0) + float(value)
        return counts

    def phase(self, calls: int, settle_s: float = 30) -> dict | None:
        """Batches since the last call, once the Generator's count covers `calls` (the exporter lags)."""
        if not self.url:
            return None
        deadline = time.monotonic() + settle_s
        while True:
            now = self.scrape()
            done = now.get("Generator", {}).get("count", 0) - self.last.get("Generator", {}).get("count", 0)
            if done >= calls or time.monotonic() > deadline:
                break
            time.sleep(2)
        out = {}
        for deployment, series in now.items():
            before = self.last.get(deployment, {})
            delta = {k: v - before.get(k, 0.0) for k, v in series.items()}
            batches = delta.pop("count", 0.0)
            if not batches:
                continue
            bounds = sorted((float(k), v) for k, v in delta.items() if k != "+Inf")
            sizes, below, low = {}, 0.0, 0
            for bound, cumulative in bounds:
                if cumulative - below > 0:
                    label = f"{low + 1}" if low + 1 >= bound else f"{low + 1}-{bound:.0f}"
                    sizes[label] = round(cumulative - below)
                below, low = cumulative, int(bound)
            out[deployment] = {"batches": round(batches), "sizes": sizes}
        self.last = now
        return out


# -- load


async def load(
    url: str,
    args,
    levels: list[int],
    max_outstanding: int,
    warm: list[dict],
    items: list[dict],
    replicas_now,
    meter: BatchMeter,
) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=max_outstanding + 8, max_keepalive_connections=max_outstanding + 8)
    timeout = httpx.Timeout(connect=30, read=900, write=30, pool=900)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        clock = time.perf_counter()
        gate = asyncio.Semaphore(min(4, max(levels)))

        async def warm_one(item: dict) -> Outcome:
            async with gate:
                return await send(client, item, time.perf_counter())

        warmed = await asyncio.gather(*(warm_one(item) for item in warm))
        print(
            f"# warm-up: {len(warm)} requests in {time.perf_counter() - clock:.1f} s, "
            f"statuses {sorted({s.status for s in warmed})}"
        )
        meter.phase(sum(s.status == 200 for s in warmed))  # the baseline for the measured phases
        closed = []
        for clients in levels:
            phase = await closed_loop(client, clients, items, args.duration)
            phase["replicas_after"] = replicas_now()
            phase["batches"] = meter.phase(phase["ok"])
            closed.append(phase)
            print(
                f"# closed {clients} clients: {phase['ok']}/{phase['sent']} ok, {phase['qps']:.3f} QPS, "
                f"p50 {phase['e2e_ms']['p50']:.0f} ms, p99 {phase['e2e_ms']['p99']:.0f} ms",
                flush=True,
            )
        batched = []
        for clients, size in args.batched:
            groups = [measured_batch(items, k, size) for k in range(max(1, len(items) // size))]
            phase = await closed_loop(client, clients, groups, args.duration)
            phase["items"] = size
            phase["qps"] = phase["ok"] * size / phase["wall_s"]  # items/s
            batched.append(phase)
            print(
                f"# closed {clients} clients x {size} items: {phase['ok']}/{phase['sent']} ok, "
                f"{phase['qps']:.3f} items/s, p50 {phase['e2e_ms']['p50']:.0f} ms",
                flush=True,
            )
        saturation = max(closed, key=lambda p: p["qps"])
        rate = saturation["qps"] / 2 if args.open_rate == "auto" else float(args.open_rate)
        opened = await open_loop(client, rate, items, args.duration, max_outstanding, args.seed)
        opened["rate_source"] = "auto: half of saturation" if args.open_rate == "auto" else "--open-rate"
        opened["replicas_after"] = replicas_now()
        opened["batches"] = meter.phase(opened["ok"])
        print(
            f"# open {rate:.3f}/s: {opened['ok']}/{opened['sent']} ok, {opened['qps']:.3f} QPS, "
            f"p50 {opened['e2e_ms']['p50']:.0f} ms, p99 {opened['e2e_ms']['p99']:.0f} ms",
            flush=True,
        )
    return {
        "closed": closed,
        "batched": batched,
        "saturation": {"clients": saturation["clients"], "qps": saturation["qps"]},
        "open": opened,
    }


def measured_batch(items: list[dict], k: int, size: int) -> list[dict]:
    """The k-th request of ``size`` items (the measured items, cycled; ids made unique per request)."""
    return [dict(items[(k * size + j) % len(items)], id=f"b{k}-{j}") for j in range(size)]


class Outcome:
    __slots__ = ("done", "error", "scheduled", "sent", "status", "timings")

    def __init__(self, scheduled: float, sent: float):
        self.scheduled, self.sent = scheduled, sent
        self.done = sent
        self.status = 0
        self.timings: dict[str, float] = {}
        self.error: str | None = None


async def send(client, item: dict | list[dict], scheduled: float) -> Outcome:
    """One request: one item, or a list of items."""
    sample = Outcome(scheduled, time.perf_counter())
    try:
        response = await client.post("/v1/tag", json={"items": item if isinstance(item, list) else [item]})
        sample.done = time.perf_counter()
        sample.status = response.status_code
        body = response.json()
        if response.status_code == 200:
            sample.timings = dict(body.get("timings_ms") or {})
        else:
            sample.error = str(body.get("error"))[:200] if isinstance(body, dict) else str(body)[:200]
    except Exception as exc:  # counted as a failed request (status 0), the load goes on
        sample.done = time.perf_counter()
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
    return sample


async def closed_loop(client, clients: int, items: list[dict], duration: float) -> dict:
    samples: list[Outcome] = []
    queue = list(reversed(items))
    started = time.perf_counter()
    deadline = started + duration

    async def worker() -> None:
        while queue and time.perf_counter() < deadline:
            item = queue.pop()
            samples.append(await send(client, item, time.perf_counter()))

    await asyncio.gather(*(worker() for _ in range(clients)))
    phase = summarize(samples, time.perf_counter() - started)
    return {"mode": "closed", "clients": clients, **phase, "loadavg_end": os.getloadavg()}


async def open_loop(
    client, rate: float, items: list[dict], duration: float, max_outstanding: int, seed: int
) -> dict:
    rng = random.Random(seed)
    gate = asyncio.Semaphore(max_outstanding)
    started = time.perf_counter()
    at, tasks, delayed = started, [], 0

    async def one(item: dict, scheduled: float) -> Outcome:
        nonlocal delayed
        if gate.locked():
            delayed += 1
        async with gate:
            return await send(client, item, scheduled)

    for item in items:
        at += rng.expovariate(rate)
        if at - started > duration:
            break
        pause = at - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        tasks.append(asyncio.create_task(one(item, at)))
    samples = list(await asyncio.gather(*tasks))
    phase = summarize(samples, time.perf_counter() - started)
    lag = [s.sent - s.scheduled for s in samples]
    return {
        "mode": "open",
        "rate": rate,
        **phase,
        "delayed_by_cap": delayed,
        "loadavg_end": os.getloadavg(),
        "send_lag_ms": {"p50": pct(lag, 50) * 1000, "max": max(lag, default=0) * 1000},
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    import numpy as np

    return float(np.percentile(values, q))


def summarize(samples: list[Outcome], wall: float) -> dict:
    """QPS counts 200 answers over the phase's wall time; latencies (ms) are of the 200 answers; open-loop
    end to end counts from the scheduled arrival."""
    ok = [s for s in samples if s.status == 200]
    errors: dict[str, int] = {}
    for s in samples:
        if s.status != 200:
            key = f"{s.status} {s.error or ''}".strip()[:120]
            errors[key] = errors.get(key, 0) + 1
    e2e = [(s.done - s.scheduled) * 1000 for s in ok]
    stages = {}
    for stage in STAGES:
        if stage == "http":
            values = [(s.done - s.sent) * 1000 - s.timings["total"] for s in ok if "total" in s.timings]
        else:
            values = [s.timings[stage] for s in ok if stage in s.timings]
        if values:
            stages[stage] = {"p50": pct(values, 50), "p99": pct(values, 99)}
    return {
        "sent": len(samples),
        "ok": len(ok),
        "non_200": len(samples) - len(ok),
        "errors": errors,
        "wall_s": wall,
        "qps": len(ok) / wall if wall > 0 else 0.0,
        "e2e_ms": {"p50": pct(e2e, 50), "p99": pct(e2e, 99), "max": max(e2e, default=float("nan"))},
        "stages_ms": stages,
    }


# -- burst mode (deadline-aware admission)


def service_deadline(app_args: dict) -> float:
    from llm4tag.service.settings import ServiceConfig

    return ServiceConfig.load(app_args.get("service")).deadline_s


def generators(application: dict) -> int:
    for d in application.get("deployments") or []:
        if d.get("name") == "Generator":
            return int(d.get("num_replicas") or (d.get("autoscaling_config") or {}).get("min_replicas") or 1)
    return 1


def replica_memory() -> dict[str, float]:
    """Resident MiB of each live Serve replica actor, by actor name (the app runs on this machine)."""
    try:
        import psutil
        import ray
        from ray.util.state import list_actors

        if not ray.is_initialized():
            return {}
        address = ray.get_runtime_context().gcs_address
        out = {}
        for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000):
            name = actor.name or ""
            if "SERVE_REPLICA" in name or actor.class_name.startswith("ServeReplica"):
                try:
                    rss = psutil.Process(actor.pid).memory_info().rss / 2**20
                except psutil.Error:
                    continue
                out[name or actor.class_name] = round(rss, 1)
        return out
    except Exception as exc:  # informative only
        return {"error": f"{type(exc).__name__}: {exc}"}


async def send_with_deadline(client, item: dict, deadline_ms: int | None) -> Outcome:
    sample = Outcome(time.perf_counter(), time.perf_counter())
    headers = {"X-Deadline-Ms": str(deadline_ms)} if deadline_ms else {}
    try:
        response = await client.post("/v1/tag", json={"items": [item]}, headers=headers)
        sample.done = time.perf_counter()
        sample.status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code != 200:
            sample.error = str(body.get("error") if isinstance(body, dict) else body)[:200]
    except Exception as exc:  # counted as a failed request (status 0)
        sample.done = time.perf_counter()
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
    return sample


async def bursts(
    url: str, args, warm: list[dict], pool: list[dict], deadline_ms: int, replicas_n: int
) -> dict:
    import httpx

    biggest = None
    out: dict[str, Any] = {"deadline_ms": deadline_ms, "generator_replicas": replicas_n, "phases": []}
    timeout = httpx.Timeout(connect=60, read=900, write=60, pool=900)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        for item in warm:
            await send_with_deadline(client, item, None)
        # The sustained rate: a closed loop at two clients per Generator replica, nothing else sent,
        # under the service's own deadline (the burst's may be shorter).
        queue = [pool[k % len(pool)] for k in range(args.requests)]
        started = time.perf_counter()
        done: list[Outcome] = []

        async def worker() -> None:
            while queue:
                done.append(await send_with_deadline(client, queue.pop(), None))

        await asyncio.gather(*(worker() for _ in range(2 * replicas_n)))
        wall = time.perf_counter() - started
        ok = sum(s.status == 200 for s in done)
        rate = ok / wall
        base = max(1, int(rate * deadline_ms / 1000))
        out["sustained"] = {
            "requests": len(done),
            "ok": ok,
            "wall_s": wall,
            "items_per_s": rate,
            "base": base,
        }
        print(
            f"# sustained: {ok}/{len(done)} ok in {wall:.1f} s = {rate:.3f} items/s; "
            f"{base} requests fit the {deadline_ms} ms deadline",
            flush=True,
        )
        for multiplier in args.burst:
            n = multiplier * base
            biggest = n
            await asyncio.sleep(3)  # the previous phase's dropped work leaves the queues
            memory_before = replica_memory()
            started = time.perf_counter()
            samples = await asyncio.gather(
                *(send_with_deadline(client, pool[k % len(pool)], deadline_ms) for k in range(n))
            )
            wall = time.perf_counter() - started
            await asyncio.sleep(3)
            phase = burst_summary(samples, multiplier, n, wall, deadline_ms)
            phase["memory_mib_before"], phase["memory_mib_after"] = memory_before, replica_memory()
            out["phases"].append(phase)
            print(f"# burst x{multiplier} ({n} requests): {json.dumps(phase['statuses'])}", flush=True)
    out["largest_burst"] = biggest
    return out


def burst_summary(samples: list[Outcome], multiplier: int, n: int, wall: float, deadline_ms: int) -> dict:
    ms = lambda group: [(s.done - s.sent) * 1000 for s in group]  # noqa: E731
    by = lambda code: [s for s in samples if s.status == code]  # noqa: E731
    accepted, shed, late = by(200), by(503), by(504)
    other = [s for s in samples if s.status not in (200, 503, 504)]
    statuses: dict[str, int] = {}
    for s in samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    refused = ms(shed) + ms(late)
    return {
        "multiplier": multiplier,
        "requests": n,
        "wall_s": wall,
        "statuses": statuses,
        "accepted_ms": {"n": len(accepted), "p50": pct(ms(accepted), 50), "p99": pct(ms(accepted), 99)},
        "rejected_503_ms": {"n": len(shed), "p50": pct(ms(shed), 50), "p99": pct(ms(shed), 99)},
        "late_504_ms": {"n": len(late), "p50": pct(ms(late), 50), "p99": pct(ms(late), 99)},
        "other_errors": {f"{s.status} {s.error}"[:120]: 1 for s in other[:5]},
        "other_5xx": sum(1 for s in other if s.status >= 500 or s.status == 0),
        "checks": {
            "accepted_p99_within_deadline": pct(ms(accepted), 99) <= deadline_ms if accepted else None,
            "rejected_p99_within_100ms": pct(ms(shed), 99) <= 100 if shed else None,
            "no_other_5xx": not any(s.status >= 500 or s.status == 0 for s in other),
            "refusals_p99_ms": pct(refused, 99),
        },
    }


def finish_burst(report: dict, args) -> None:
    from benchmarks._serve_report import table

    report["machine"]["loadavg_end"] = os.getloadavg()
    burst = report["burst"]
    f = lambda v: "" if v != v else f"{v:.0f}"  # noqa: E731
    rows = []
    for phase in burst["phases"]:
        rows.append(
            [
                f"x{phase['multiplier']}",
                str(phase["requests"]),
                f"{phase['accepted_ms']['n']}",
                f"{f(phase['accepted_ms']['p50'])} / {f(phase['accepted_ms']['p99'])}",
                f"{phase['rejected_503_ms']['n']}",
                f"{f(phase['rejected_503_ms']['p50'])} / {f(phase['rejected_503_ms']['p99'])}",
                f"{phase['late_504_ms']['n']}",
                f"{f(phase['late_504_ms']['p99'])}",
                str(phase["other_5xx"]),
                f"{sum(v for v in phase['memory_mib_before'].values() if isinstance(v, float)):.0f} -> "
                f"{sum(v for v in phase['memory_mib_after'].values() if isinstance(v, float)):.0f}",
            ]
        )
    print()
    print(f"## serve_load --burst: model {report['model']}, deadline {burst['deadline_ms']} ms")
    print(
        f"machine: {report['machine']['cpus']} CPUs; load average start "
        f"{report['machine']['loadavg_start']}, end {report['machine']['loadavg_end']}; "
        f"sustained {burst['sustained']['items_per_s']:.3f} items/s at "
        f"{2 * burst['generator_replicas']} clients, base {burst['sustained']['base']} requests"
    )
    header = [
        "burst",
        "requests",
        "200",
        "200 p50/p99 ms",
        "503",
        "503 p50/p99 ms",
        "504",
        "504 p99 ms",
        "other 5xx",
        "replica MiB before -> after",
    ]
    print(table(rows, header))
    for phase in burst["phases"]:
        print(f"x{phase['multiplier']} per replica MiB after: {json.dumps(phase['memory_mib_after'])}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(args.model).name}-burst.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
