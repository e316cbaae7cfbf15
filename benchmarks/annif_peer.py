"""Annif, the subject-indexing tool many users already run, as a peer on the shared data sets.

    bash scripts/setup_annif.sh                      # .venv-annif with Annif and its punkt_tab data
    .venv-annif/bin/python -m benchmarks.annif_peer [--datasets banking77,...] [--backends omikuji,tfidf]

Runs in .venv-annif (Annif's pins are not ours), so it reads the data files itself and drives the
real ``annif`` command line. Per data set, under .bench-cache/annif/<set>/ (Annif's working folder):
the tag vocabulary as an Annif subject file (TSV: ``<uri>\\tlabel``, one URI per tag), the train
split as an Annif JSONL corpus, ``projects.cfg`` with one project per backend (English Snowball
analyzer, Annif's defaults otherwise); ``annif load-vocab``, ``annif train`` on the train split only,
``annif index`` on ALL test items (--limit 10). The suggestions become our tag-output rows
``{"id", "tags": [{"tag", "confidence"}]}`` in out/annif/<set>/<backend>.jsonl, which
``llm4tag eval --gold <test items> --pred ...`` scores; train and suggest seconds go to
out/annif/<set>/timings.json and are printed.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._paths import (
    DEFAULT_CACHE,
    OUT,
    add_data_arguments,
    add_datasets_argument,
    add_out_argument,
    benchmark_parser,
    names,
)

BACKENDS = ("omikuji", "tfidf")
# Beyond the defaults (--backends): MLLM matches the vocabulary's labels in the text (for a vocabulary
# whose tags are words, e.g. YSO's prefLabels); the ensemble averages Omikuji's and MLLM's scores
# (Annif's `ensemble` backend: nothing to train; it needs both sources trained first).
EXTRA_BACKENDS = ("mllm", "ensemble")
TRAINED_ELSEWHERE = {"ensemble"}
URI = "http://llm4tag.invalid/{set}/t{index}"
LIMIT = 10


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def annif_command(venv_bin: Path) -> str:
    command = venv_bin / "annif"
    if not command.exists():
        raise SystemExit(f"{command} not found: run bash scripts/setup_annif.sh first")
    return str(command)


def run(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def project_config(name: str, backend: str) -> str:
    sources = f"sources = {name}-omikuji,{name}-mllm\n" if backend == "ensemble" else ""
    return (
        f"[{name}-{backend}]\nname = {name} {backend}\nlanguage = en\nbackend = {backend}\n"
        f"vocab = {name}\nanalyzer = snowball(english)\nlimit = {LIMIT}\n{sources}\n"
    )


def prepare(name: str, data_dir: Path, work: Path) -> tuple[dict[str, str], list[dict]]:
    """Annif's inputs for one data set; returns {uri: tag} and the test records."""
    tags = [row["tag"] for row in read_jsonl(data_dir / name / "tags.jsonl.gz")]
    uri_of = {tag: URI.format(set=name, index=i) for i, tag in enumerate(tags)}
    items = read_jsonl(data_dir / name / "items.jsonl.gz")
    train = [r for r in items if r.get("split") == "train"]
    test = [r for r in items if r.get("split") == "test"]
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "subjects.tsv", "w", encoding="utf-8") as fh:
        for tag, uri in uri_of.items():
            # One line per subject; a label is one line of text.
            fh.write(f"<{uri}>\t{' '.join(tag.split())}\n")
    write_jsonl(
        work / "train.jsonl",
        (
            {"text": r["text"], "subjects": [{"uri": uri_of[t]} for t in r.get("tags") or () if t in uri_of]}
            for r in train
            if any(t in uri_of for t in r.get("tags") or ())
        ),
    )
    write_jsonl(work / "test.jsonl", ({"text": r["text"], "document_id": r["id"]} for r in test))
    (work / "projects.cfg").write_text(
        "".join(project_config(name, backend) for backend in (*BACKENDS, *EXTRA_BACKENDS))
    )
    return {uri: tag for tag, uri in uri_of.items()}, test


def to_rows(results_path: Path, tag_of: dict[str, str], test: list[dict]) -> list[dict]:
    """Annif's index output in test order as our tag rows (every test item gets a row)."""
    by_id = {}
    for record in read_jsonl(results_path):
        by_id[record["document_id"]] = [
            {"tag": tag_of[hit["uri"]], "confidence": round(min(max(float(hit["score"]), 0.0), 1.0), 6)}
            for hit in record.get("results", [])
        ]
    return [{"id": r["id"], "tags": by_id.get(r["id"], [])} for r in test]


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__file__, __doc__)
    add_data_arguments(parser, cache=False)
    add_datasets_argument(parser)
    parser.add_argument(
        "--backends",
        type=names,
        default=list(BACKENDS),
        help=f"of {', '.join((*BACKENDS, *EXTRA_BACKENDS))} (ensemble after omikuji and mllm)",
    )
    parser.add_argument("--work", type=Path, default=DEFAULT_CACHE / "annif", help="Annif's working folder")
    add_out_argument(parser, OUT / "annif")
    parser.add_argument("--jobs", type=int, default=1, help="annif train --jobs")
    args = parser.parse_args(argv)
    annif = annif_command(Path(sys.executable).parent)
    print("| data set | backend | train items | test items | train s | suggest s | suggest ms/item |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.datasets:
        work = (args.work / name).resolve()
        tag_of, test = prepare(name, args.data, work)
        with open(work / "train.jsonl", encoding="utf-8") as fh:
            n_train = sum(1 for _ in fh)
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        common = ["-p", str(work / "projects.cfg"), "-v", "WARNING"]
        run([annif, "load-vocab", name, str(work / "subjects.tsv"), "-L", "en", "--force", *common], work)
        timings = {}
        for backend in args.backends:
            project = f"{name}-{backend}"
            train_s = 0.0
            if backend not in TRAINED_ELSEWHERE:
                train_s = run(
                    [annif, "train", project, str(work / "train.jsonl"), "--jobs", str(args.jobs), *common],
                    work,
                )
            results = work / f"{backend}.results.jsonl"
            suggest_s = run(
                [
                    annif,
                    "index",
                    project,
                    str(work / "test.jsonl"),
                    "--limit",
                    str(LIMIT),
                    "-I",
                    "--force",
                    "-O",
                    str(results),
                    *common,
                ],
                work,
            )
            rows = to_rows(results, tag_of, test)
            write_jsonl(out / f"{backend}.jsonl", rows)
            timings[backend] = {
                "train_items": n_train,
                "test_items": len(test),
                "train_seconds": round(train_s, 2),
                "suggest_seconds": round(suggest_s, 2),
                "suggest_ms_per_item": round(1000 * suggest_s / max(len(test), 1), 3),
                "annif_version": subprocess.run(
                    [annif, "--version"], capture_output=True, text=True
                ).stdout.strip(),
            }
            t = timings[backend]
            print(
                f"| {name} | {backend} | {n_train} | {len(test)} | {t['train_seconds']:.1f} | "
                f"{t['suggest_seconds']:.1f} | {t['suggest_ms_per_item']:.2f} |",
                flush=True,
            )
        previous = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
        (out / "timings.json").write_text(json.dumps({**previous, **timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
