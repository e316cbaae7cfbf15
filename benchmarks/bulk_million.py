"""A million items through `llm4tag tag --output DIR/` with a ranker store: items/s, memory over the
run, and a kill at about half way then a resume that must lose and repeat nothing.

    python -m benchmarks.bulk_million --store STORE [--items 1000000] [--kill-at 0.5]
        [--config bulk.yaml] [--work DIR] [--datasets banking77]

1. input   --items rows ``{"id": "m0000000", "text": ...}`` (unique ids) in Parquet files of 100,000,
           the texts of the shared sets' test splits (--datasets; never train items) taken in a
           seeded order and cycled; kept in --work and made once;
2. run 1   the CLI in a child process on a fresh local Ray cluster, killed (SIGKILL, its whole process
           tree) once the output folder holds --kill-at of the rows;
3. run 2   the same command again: it skips the ids already written and tags the rest;
4. check   every input id exactly once in the output, nothing else, no temporary file left.

While each run goes, every --sample-s seconds: the rows written (the output files' Parquet footers)
and the memory of the process tree (the sum of its processes' PSS, which counts shared pages once,
and the largest RSS); printed as a table by tenths of the run, with the peak. Prints items/s per run
and overall (wall time, start-up included), the machine's load average, and writes everything to
--out/report.json. The store is used as it is (build one with `llm4tag build`, or
benchmarks/_stores.py); the job is the CLI's own, settings from --config.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._paths import OUT, REPO, add_data_arguments, add_out_argument, benchmark_parser, names

FILE_ROWS = 100_000


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    parser.add_argument("--store", required=True, type=Path, help="a store with a fitted ranking")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of the rows, then SIGKILL")
    parser.add_argument("--config", type=Path, help="settings for the job (bulk: actors, batches)")
    parser.add_argument("--work", type=Path, default=REPO / ".bench-cache" / "bulk_million")
    parser.add_argument("--datasets", type=names, default=["banking77"], help="whose test texts")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    add_data_arguments(parser, cache=False)
    add_out_argument(parser, OUT / "bulk_million")
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at must be within (0, 1)")

    source = make_input(args.work / f"input-{args.items}-{'+'.join(args.datasets)}-{args.seed}", args)
    output = args.work / "output"
    if output.exists():
        import shutil

        shutil.rmtree(output)
    command = [sys.executable, "-m", "llm4tag", "tag", "--store", str(args.store), "--input", str(source)]
    command += ["--output", f"{output}/"] + (["--config", str(args.config)] if args.config else [])
    report: dict = {"items": args.items, "input": str(source), "command": command, "datasets": args.datasets}
    report["load_start"] = os.getloadavg()
    print(f"# load average at start: {report['load_start']}", flush=True)
    kill_rows = int(args.kill_at * args.items)
    report["run1"] = run(command, output, args.sample_s, kill_rows)
    print(f"# run 1 killed with {report['run1']['rows']} rows written", flush=True)
    report["run2"] = run(command, output, args.sample_s, None)
    report["check"] = check(output, args.items)
    report["load_end"] = os.getloadavg()
    rows = report["run1"]["rows"] + report["run2"]["rows_added"]
    wall = report["run1"]["wall_s"] + report["run2"]["wall_s"]
    report["items_per_s"] = rows / wall
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"# wrote {args.out / 'report.json'}")


def make_input(folder: Path, args) -> Path:
    """Parquet files of unique ids over the test texts, made once (a complete folder or none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm4tag.data import read_items

    if (folder / "_complete").exists():
        return folder
    texts = []
    for name in args.datasets:
        texts += [i.text for i in read_items(args.data / name / "items.jsonl.gz", split="test").items]
    random.Random(args.seed).shuffle(texts)
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, args.items, FILE_ROWS):
        n = min(FILE_ROWS, args.items - start)
        ids = [f"m{k:07d}" for k in range(start, start + n)]
        table = pa.table({"id": ids, "text": [texts[k % len(texts)] for k in range(start, start + n)]})
        pq.write_table(table, folder / f"part-{start // FILE_ROWS:03d}.parquet")
    (folder / "_complete").write_text(f"{args.items} rows from {len(texts)} texts\n")
    print(
        f"# input: {args.items} rows over {len(texts)} test texts of {', '.join(args.datasets)}", flush=True
    )
    return folder


class Rows:
    """Rows in the output folder's complete files, read from their footers (each file once)."""

    def __init__(self, folder: Path):
        self.folder, self.seen, self.count = folder, set(), 0

    def now(self) -> int:
        import pyarrow.parquet as pq

        if self.folder.is_dir():
            for path in self.folder.glob("part-*.parquet"):
                if path.name not in self.seen:
                    try:
                        self.count += pq.ParquetFile(path).metadata.num_rows
                    except OSError:
                        continue  # renamed into place but not readable yet: the next sample
                    self.seen.add(path.name)
        return self.count


def memory(pid: int) -> tuple[float, float, int]:
    """(sum of PSS, largest RSS) in MiB and the number of processes, over ``pid`` and its children."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0, 0
    pss = rss = 0.0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss += info.pss
        rss = max(rss, info.rss)
    return pss / 2**20, rss / 2**20, len(procs)


def run(command: list[str], output: Path, sample_s: float, kill_rows: int | None) -> dict:
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local cluster
    rows = Rows(output)
    before = rows.now()
    started = time.perf_counter()
    job = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    samples, tree = [], {}
    try:
        while job.poll() is None:
            time.sleep(sample_s)
            tree.update((p.pid, p) for p in _children(job.pid))
            pss, rss, procs = memory(job.pid)
            done = rows.now() - before
            samples.append(
                {
                    "s": time.perf_counter() - started,
                    "rows": done,
                    "pss_mib": pss,
                    "rss_max_mib": rss,
                    "procs": procs,
                }
            )
            print(
                f"# {samples[-1]['s']:7.0f} s  {done:8d} rows  PSS {pss:7.0f} MiB  ({procs} processes)",
                flush=True,
            )
            if kill_rows is not None and before + done >= kill_rows:
                job.send_signal(signal.SIGKILL)
                job.wait(60)
                break
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(60)
        # The local cluster the job started dies with its driver; whatever outlived it is killed here.
        _, alive = psutil.wait_procs(list(tree.values()), timeout=20)
        for proc in alive:
            proc.kill()
    wall = time.perf_counter() - started
    out = job.stdout.read().decode(errors="replace") if job.stdout else ""
    result = {
        "wall_s": wall,
        "rows": rows.now(),
        "rows_added": rows.now() - before,
        "killed": kill_rows is not None,
        "exit_code": job.returncode,
        "samples": samples,
        "peak_pss_mib": max((s["pss_mib"] for s in samples), default=0.0),
        "peak_rss_max_mib": max((s["rss_max_mib"] for s in samples), default=0.0),
    }
    if kill_rows is None:
        last = out.strip().splitlines()[-1] if out.strip() else ""
        try:
            result["job_report"] = json.loads(last)
        except ValueError:
            result["job_report"] = last[-500:]
    result["items_per_s"] = result["rows_added"] / wall if wall else 0.0
    return result


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def check(output: Path, n: int) -> dict:
    """Every input id once in the output, nothing else, no temporary file left."""
    import pyarrow.parquet as pq

    ids: list[str] = []
    for path in sorted(output.glob("part-*.parquet")):
        ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
    unique = set(ids)
    expected = {f"m{k:07d}" for k in range(n)}
    return {
        "rows": len(ids),
        "unique": len(unique),
        "repeated": len(ids) - len(unique),
        "missing": len(expected - unique),
        "unexpected": len(unique - expected),
        "temporary_files": len(list(output.glob(".*.tmp"))),
        "lossless": len(ids) == len(unique) == n and unique == expected,
    }


def print_report(report: dict) -> None:
    print()
    print(f"## bulk_million: {report['items']} items, {', '.join(report['datasets'])} test texts")
    print(f"load average: start {report['load_start']}, end {report['load_end']}")
    print("| run | wall s | rows added | items/s | peak PSS MiB (tree) | peak RSS MiB (largest process) |")
    print("|---|---|---|---|---|---|")
    for name in ("run1", "run2"):
        r = report[name]
        print(
            f"| {name}{' (killed)' if r['killed'] else ''} | {r['wall_s']:.0f} | {r['rows_added']} | "
            f"{r['items_per_s']:.1f} | {r['peak_pss_mib']:.0f} | {r['peak_rss_max_mib']:.0f} |"
        )
    print(f"overall: {report['items_per_s']:.1f} items/s (wall time of both runs, start-ups included)")
    print()
    print("memory over each run, by tenths of its rows (PSS of the tree, MiB):")
    for name in ("run1", "run2"):
        samples = report[name]["samples"]
        if not samples:
            continue
        total = max(s["rows"] for s in samples) or 1
        marks = []
        for tenth in range(1, 11):
            at = next((s for s in samples if s["rows"] >= tenth * total / 10), samples[-1])
            marks.append(f"{at['pss_mib']:.0f}")
        print(f"  {name}: " + " ".join(marks))
    print(f"check: {json.dumps(report['check'])}")


if __name__ == "__main__":
    main()
