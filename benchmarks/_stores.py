"""The one way a benchmark gets a store: built once from a data set's train split, then read from the
cache (never used by the product).

    folder = dataset_store(ds, settings, encoder, args.cache, rebuild=args.rebuild)
    pipeline = TaggingPipeline.open(folder, settings)        # or Recaller.open, load_ranking, ...

builds what `llm4tag build` builds (llm4tag/store_builder.py: the content–tag graph, the SRKI
knowledge bases, and the learned recall and ranker where ``settings.ranking`` fits them) from the
data set's cached vectors, and keeps it in ``<cache>/stores/<set>-<key>/``. The key is a hash of what
the build reads: the train items (id, encoded text, tags), the vocabulary, their vectors, the
knowledge files, the encoder and every setting but those only tagging reads (:data:`TAGGING_ONLY`).
The same data and settings open the same store in any script; other settings get their own.
``--rebuild`` builds it again: the key does not cover the code, so pass it after changing how a
store is built or fitted (a store built by other code than the checkout's is pointed out).

The build's summary and timings are in ``benchmark-build.json`` inside the store
(:func:`build_record`): a script that reports how long the store or the ranking took to fit reports
the build's own seconds, whether it built the store now or read it from the cache.

Never write into the cached store: a script that changes its store (cascade_quality.py fits route:
auto into it) asks for a working copy with ``copy_to``, made once and refused when the cache has
been rebuilt since (rows the script cached beside it came from the old store).

Other data (a sample of a large set, the bundled BANKING77 sample: :func:`sample_store`) goes
through :func:`train_store` with its items, tags and, if it has them, vectors.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks._paths import REPO, SAMPLE, SAMPLE_RULES, shown
from graph_store.durable import atomic_folder, exclusive_lock, recover_folder, write_atomically
from llm4tag import store_builder
from llm4tag.config import Settings
from llm4tag.data import Item, Tag, read_items, read_tags
from llm4tag.encoded_text import item_text
from llm4tag.encoder import Encoder
from llm4tag.progress import step
from llm4tag.skos import aliases

RECORD = "benchmark-build.json"
# Settings sections that only tagging, serving or other commands read: they do not change the store.
TAGGING_ONLY = ("llm", "prompts", "bulk", "vocab", "peers", "finetune")
# The pipeline fields the build reads (the ranking's task and tags per item, extra knowledge files).
PIPELINE_BUILD_FIELDS = ("mode", "max_tags", "knowledge_files")


def dataset_store(
    ds,
    settings: Settings,
    encoder: Encoder,
    cache: Path,
    *,
    rebuild: bool = False,
    copy_to: Path | None = None,
) -> Path:
    """The store of a data set's train split (``ds``: a benchmarks._datasets.Dataset, or anything
    with ``name``, ``train``, ``tags``, ``train_vectors`` and ``tag_vectors``)."""
    return train_store(
        ds.name,
        ds.train,
        ds.tags,
        settings,
        encoder,
        cache,
        train_vectors=ds.train_vectors,
        tag_vectors=ds.tag_vectors,
        rebuild=rebuild,
        copy_to=copy_to,
    )


def sample_store(
    cache: Path, settings: Settings | None = None, *, rebuild: bool = False, copy_to: Path | None = None
) -> Path:
    """The store of the bundled BANKING77 sample (data/sample/banking77: its train items, tags and
    rules), as scripts/serve.sh builds it."""
    folder = SAMPLE / "banking77"
    return file_store(
        folder / "train.jsonl",
        folder / "tags.jsonl",
        settings or Settings(),
        cache,
        knowledge_files=[SAMPLE_RULES],
        rebuild=rebuild,
        copy_to=copy_to,
    )


def file_store(
    items_path: Path,
    tags_path: Path,
    settings: Settings,
    cache: Path,
    *,
    knowledge_files: Sequence[Path] = (),
    language: str | None = None,
    rebuild: bool = False,
    copy_to: Path | None = None,
) -> Path:
    """The store of an items file and a vocabulary file, read as `llm4tag build` reads them
    (``language``: of a SKOS vocabulary's labels); named by the items file's folder and name."""
    tags = read_tags(tags_path, language)
    items = read_items(items_path, vocabulary={t.tag for t in tags}, aliases=aliases(tags)).items
    return train_store(
        f"{Path(items_path).parent.name}-{Path(items_path).stem}",
        items,
        tags,
        settings,
        Encoder(settings.encoder),
        cache,
        knowledge_files=knowledge_files,
        rebuild=rebuild,
        copy_to=copy_to,
    )


def train_store(
    label: str,
    train: Sequence[Item],
    tags: Sequence[Tag],
    settings: Settings,
    encoder: Encoder,
    cache: Path,
    *,
    train_vectors: np.ndarray | None = None,
    tag_vectors: np.ndarray | None = None,
    knowledge_files: Sequence[Path] = (),
    rebuild: bool = False,
    copy_to: Path | None = None,
) -> Path:
    """The store built from ``train`` (annotated items) and ``tags`` with ``settings``, from the cache
    or built now; its folder, or with ``copy_to`` that working copy's. ``label`` names the folder."""
    key = store_key(train, tags, settings, encoder, train_vectors, tag_vectors, knowledge_files)
    folder = cache / "stores" / f"{label}-{key}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder.parent / f".{folder.name}.lock"):
        recover_folder(folder)
        if rebuild or not (folder / RECORD).is_file():
            inputs = (train, tags, settings, encoder, train_vectors, tag_vectors, knowledge_files)
            with step(f"build the {label} store", total=3, unit="part") as bar, atomic_folder(folder) as tmp:
                record = _build(tmp, label, key, *inputs, bar)
            seconds, summary = record["seconds"]["total"], json.dumps(record["summary"])
            print(f"# built {shown(folder)} in {seconds:.0f} s: {summary}", flush=True)
        else:
            record = build_record(folder)
            print(f"# store {shown(folder)}: cached (built {record['built_at']}; --rebuild builds it again)")
            if record.get("code") != code_fingerprint():
                print(
                    f"# note: {shown(folder)} was built by other code of llm4tag/ and graph_store/ than now"
                )
    return folder if copy_to is None else working_copy(folder, Path(copy_to))


def working_copy(folder: Path, target: Path) -> Path:
    """A copy of the cached store at ``folder`` that its script may change, made once; a copy of another
    build (other settings or data, or ``--rebuild`` since) is refused, and a copy made before stores
    were cached is used as it is."""
    record = build_record(folder)
    if target.exists():
        copied = target / RECORD
        if copied.is_file() and json.loads(copied.read_text())["build_id"] != record["build_id"]:
            raise SystemExit(
                f"{target} is a copy of another build than {shown(folder)} (other settings or data, or "
                "--rebuild since): the rows cached beside it came from that store; use a new --out (or "
                "remove that folder) to start from this one"
            )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    with atomic_folder(target) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
    print(f"# copied it to {shown(target)}", flush=True)
    return target


def build_record(folder: Path) -> dict:
    """What the build of the cached store at ``folder`` wrote: its key, build id, summary (as
    `llm4tag build` prints it) and seconds (graph, knowledge, save, ranking, total)."""
    return json.loads((folder / RECORD).read_text())


def store_key(
    train: Sequence[Item],
    tags: Sequence[Tag],
    settings: Settings,
    encoder: Encoder,
    train_vectors: np.ndarray | None,
    tag_vectors: np.ndarray | None,
    knowledge_files: Sequence[Path],
) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([encoder.id, build_settings(settings)], sort_keys=True).encode())
    fields = settings.texts.item_fields
    for item in train:
        digest.update(json.dumps([item.id, item_text(item, fields), list(item.tags or ())]).encode())
    for tag in tags:
        digest.update(json.dumps([tag.tag, tag.description, dict(tag.extra)], default=str).encode())
    for vectors in (train_vectors, tag_vectors):
        if vectors is not None:
            digest.update(np.ascontiguousarray(vectors, np.float32).tobytes())
    for path in [*settings.pipeline.knowledge_files, *knowledge_files]:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:12]


def build_settings(settings: Settings) -> dict:
    """The settings a store build reads (all but :data:`TAGGING_ONLY` and the pipeline's tagging
    fields)."""
    dump = settings.model_dump(mode="json")
    for section in TAGGING_ONLY:
        dump.pop(section, None)
    dump["pipeline"] = {k: dump["pipeline"][k] for k in PIPELINE_BUILD_FIELDS}
    return dump


def code_fingerprint() -> str:
    """A hash of the core's sources (llm4tag/, graph_store/): recorded with a build, so that a store
    built by other code is pointed out (not rebuilt: most changes do not touch the build)."""
    digest = hashlib.sha256()
    for package in ("llm4tag", "graph_store"):
        for path in sorted((REPO / package).rglob("*.py")):
            digest.update(path.relative_to(REPO).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _build(
    folder: Path,
    label: str,
    key: str,
    train: Sequence[Item],
    tags: Sequence[Tag],
    settings: Settings,
    encoder: Encoder,
    train_vectors: np.ndarray | None,
    tag_vectors: np.ndarray | None,
    knowledge_files: Sequence[Path],
    bar,
) -> dict:
    started = time.perf_counter()
    parts = store_builder.build_parts(
        train,
        tags,
        settings,
        encoder,
        knowledge_files=[str(p) for p in knowledge_files],
        item_vectors=train_vectors,
        tag_vectors=tag_vectors,
    )
    bar.update()
    saving = time.perf_counter()
    store_builder.save_parts(parts, folder)
    bar.update()
    fitting = time.perf_counter()
    report = parts.report
    ranking = store_builder.fit_store_ranking(
        folder, parts.store, report.annotated, report.item_vectors, settings, encoder.id
    )
    bar.update()
    done = time.perf_counter()
    record = {
        "label": label,
        "key": key,
        "build_id": uuid.uuid4().hex,
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code": code_fingerprint(),
        "summary": {**report.stats, **ranking},
        "seconds": {
            "encode": report.encode_seconds,
            "graph": report.build_seconds,
            "knowledge": parts.knowledge_seconds,
            "save": fitting - saving,
            "ranking": done - fitting,
            "total": done - started,
        },
    }
    write_atomically(folder / RECORD, (json.dumps(record, indent=1) + "\n").encode())
    return record
