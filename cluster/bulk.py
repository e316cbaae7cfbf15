"""Bulk offline tagging on Ray Data: Parquet/JSONL in, a folder of Parquet files out, resumable.

    read (Parquet or JSONL) -> EncodeRecallStage -> GenerateStage -> CalibrateStage -> driver writes files

With a ranker in the store (``pipeline.route``), the recall stage also ranks and routes each item by
the tag flow's own rule (``llm4tag.flow.route_flow``); the generate stage calls the LLM only for the
items routed to it (the others pass through its actors as data, untouched), and the last stage writes
every row with ``llm4tag.flow.routed_rows``, as the in-process pipeline and Serve do.

Each stage is an actor pool over one of the pipeline's stage methods (``TaggingPipeline.encode``/``recall``,
``generate``, ``calibrate`` + ``result_row``), so its rows equal those of ``TaggingPipeline.tag`` under the
same settings. Between stages the data are Arrow-friendly columns: the vector as a tensor column of
float32, candidates and generations as JSON text (their optional fields make structs awkward).

Output: the driver, not the workers, writes the files. Each file is written under a hidden temporary
name, fsynced and renamed into place, so a file in the folder is always complete; a rerun reads the ids of
those files and tags only the rest. Writing on the driver also keeps the output and the resume check on
one filesystem when the cluster is remote (``ray://``), where worker-side files would land on the nodes.
Tagging rows are small next to the LLM work that makes them, so the driver is not the bottleneck.
The files (output schema, output folder, input) are cluster/bulk_files.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.bulk_files import (
    InputCheck,
    OutputFolder,
    check_input,
    input_format,
    output_schema,
    parquet_files,
    parse_jsonl_lines,
    select_rows,
    to_item,
)
from graph_store import Candidate
from llm4tag import flow
from llm4tag.calibrator import Judged, judges_in_context
from llm4tag.config import BulkStage, Settings
from llm4tag.errors import DataError, LLM4TagError
from llm4tag.flow import result_row
from llm4tag.generator import Generation
from llm4tag.pipeline import TaggingPipeline
from llm4tag.progress import step
from llm4tag.ranking.cascade import ItemRoute, judged_tags

STAGES = ("all", "recall")

# --- the stages (Ray Data instantiates each class once per actor)


class EncodeRecallStage:
    """CPU: item text -> vector -> graph candidates."""

    def __init__(self, store: str, settings: Settings, source: str, final: bool = False):
        self.pipeline = TaggingPipeline.open(store, settings, load_engine=False)
        self.source = source
        self.final = final  # recall-only job: emit output rows, not columns for the next stage

    def __call__(self, batch: pa.Table) -> pa.Table | dict[str, np.ndarray]:
        items = [to_item(r, self.source) for r in batch.to_pylist()]
        routed = self.pipeline.plan is not None and not self.final
        if not items:
            return _empty(self.final, self.pipeline.recaller.encoder.dim, routed)
        contents, vectors = self.pipeline.encode(items)
        if routed:
            recall = self.pipeline.recaller.store.config.recall
            steps = flow.route_flow(
                contents, vectors, self.pipeline.search(vectors), recall, self.pipeline.plan
            )
            routes = flow.run(steps, self.pipeline.answer)
            return {
                "id": np.array([i.id for i in items], dtype=object),
                "content": np.array(contents, dtype=object),
                "vector": vectors,
                "candidates": np.array(
                    [json.dumps([{"tag": t} for t in r.candidates]) for r in routes], dtype=object
                ),
                "route": np.array([json.dumps(r.to_dict()) for r in routes], dtype=object),
            }
        candidates = self.pipeline.recall(vectors)
        if self.final:
            rows = [
                {"id": i.id, "candidates": [c.to_dict() for c in cands]}
                for i, cands in zip(items, candidates, strict=True)
            ]
            return pa.Table.from_pylist(rows, schema=output_schema("recall", False, False, False))
        return {
            "id": np.array([i.id for i in items], dtype=object),
            "content": np.array(contents, dtype=object),
            "vector": vectors,
            "candidates": np.array(
                [json.dumps([c.to_dict() for c in cs]) for cs in candidates], dtype=object
            ),
        }


def _empty(final: bool, dim: int, routed: bool = False) -> pa.Table | dict[str, np.ndarray]:
    # Same columns and vector width as a full batch, so the blocks' schemas still unify.
    if final:
        return output_schema("recall", False, False, False).empty_table()
    return {
        "id": np.array([], dtype=object),
        "content": np.array([], dtype=object),
        "vector": np.zeros((0, dim), np.float32),
        "candidates": np.array([], dtype=object),
    } | ({"route": np.array([], dtype=object)} if routed else {})


class GenerateStage:
    """LLM: knowledge-enhanced generation over the recalled candidates (no graph, no encoder). When the
    judgments continue the generation conversations (``prompts.layout``) it judges too, on the engine
    that holds them, and the calibrate stage only writes the rows."""

    def __init__(self, store: str, settings: Settings):
        settings = settings.with_overrides({"pipeline": {"calibrate": _judges_here(settings)}})
        self.pipeline = TaggingPipeline.open(store, settings, load_graph=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["id"]]
        passed = [k for k in ("id", "content", "candidates", "route") if k in batch]
        if not ids:
            empty = np.array([], dtype=object)
            judged = {"verdicts": empty} if self.pipeline.calibrator is not None else {}
            return {k: batch[k] for k in passed} | {"generation": empty} | judged
        contents = [str(c) for c in batch["content"]]
        vectors = np.ascontiguousarray(batch["vector"], dtype=np.float32)
        names = [[c["tag"] for c in json.loads(cs)] for cs in batch["candidates"]]
        # Routed: only the items the ranker did not settle reach the LLM ("" for the others).
        routes = [ItemRoute.from_dict(json.loads(r)) for r in batch["route"]] if "route" in batch else None
        sent = (
            [i for i, r in enumerate(routes) if r.needs_llm] if routes is not None else list(range(len(ids)))
        )
        generations = (
            self.pipeline.generate(
                [ids[i] for i in sent], [contents[i] for i in sent], vectors[sent], [names[i] for i in sent]
            )
            if sent
            else []
        )
        column = [""] * len(ids)
        for i, g in zip(sent, generations, strict=True):
            column[i] = json.dumps(asdict(g))
        out = {k: batch[k] for k in passed} | {"generation": np.array(column, dtype=object)}
        if self.pipeline.calibrator is not None:
            tags = [
                judged_tags(routes[i], g.tags) if routes is not None else g.tags
                for i, g in zip(sent, generations, strict=True)
            ]
            verdicts = self.pipeline.calibrate([contents[i] for i in sent], tags, generations) if sent else []
            judged = ["[]"] * len(ids)
            for i, vs in zip(sent, verdicts, strict=True):
                judged[i] = json.dumps([asdict(v) for v in vs])
            out["verdicts"] = np.array(judged, dtype=object)
        return out


def _judges_here(settings: Settings) -> bool:
    """Whether the generate stage also judges (the judgments continue its conversations)."""
    return settings.pipeline.calibrate and judges_in_context(settings.llm, settings.prompts)


class CalibrateStage:
    """LLM: Yes/No verdict per generated tag, then the output rows (``pipeline.result_row``)."""

    def __init__(self, store: str, settings: Settings, with_candidates: bool, with_dropped: bool):
        # Judged already by the generate stage: no model needed here.
        self.pipeline = TaggingPipeline.open(
            store, settings, load_graph=False, load_engine=not _judges_here(settings)
        )
        self.with_candidates = with_candidates
        self.with_dropped = with_dropped
        self.schema = output_schema(
            "all",
            with_candidates,
            with_dropped,
            with_raw=not settings.pipeline.constrained,
            routed=self.pipeline.plan is not None,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        if "route" in batch:
            return self._routed(batch)
        generations = [Generation(**json.loads(g)) for g in batch["generation"]]
        contents = [str(c) for c in batch["content"]]
        if "verdicts" in batch:
            verdicts = [[Judged(**v) for v in json.loads(vs)] for vs in batch["verdicts"]]
        else:
            verdicts = (
                self.pipeline.calibrate(contents, [g.tags for g in generations], generations)
                if generations
                else []
            )
        rows = [
            result_row(
                str(item_id),
                [Candidate.from_dict(c) for c in json.loads(cands)],
                generation,
                judged,
                self.with_candidates,
                self.with_dropped,
            )
            for item_id, cands, generation, judged in zip(
                batch["id"], batch["candidates"], generations, verdicts, strict=True
            )
        ]
        return pa.Table.from_pylist(rows, schema=self.schema)

    def _routed(self, batch: dict[str, np.ndarray]) -> pa.Table:
        routes = [ItemRoute.from_dict(json.loads(r)) for r in batch["route"]]
        generations = [Generation(**json.loads(g)) if g else None for g in batch["generation"]]
        if "verdicts" in batch:
            verdicts = [[Judged(**v) for v in json.loads(vs)] for vs in batch["verdicts"]]
        else:
            sent = [i for i, g in enumerate(generations) if g is not None]
            contents = [str(batch["content"][i]) for i in sent]
            tags = [judged_tags(routes[i], generations[i].tags) for i in sent]
            judged = self.pipeline.calibrate(contents, tags, [generations[i] for i in sent]) if sent else []
            verdicts = [[] for _ in routes]
            for i, vs in zip(sent, judged, strict=True):
                verdicts[i] = vs
        rows = flow.routed_rows(
            [str(i) for i in batch["id"]],
            routes,
            generations,
            verdicts,
            self.pipeline.plan,
            self.with_candidates,
            self.with_dropped,
        )
        return pa.Table.from_pylist(rows, schema=self.schema)


# --- the job


def _compute(stage: BulkStage):
    import ray.data

    if stage.max_actors is not None:
        return ray.data.ActorPoolStrategy(min_size=stage.actors, max_size=stage.max_actors)
    return ray.data.ActorPoolStrategy(size=stage.actors)


def _stage_args(stage: BulkStage) -> dict[str, Any]:
    args: dict[str, Any] = {
        "batch_size": stage.batch_size,
        "compute": _compute(stage),
        "num_cpus": stage.num_cpus,
    }
    if stage.num_gpus:
        args["num_gpus"] = stage.num_gpus
    return args


def build_dataset(
    input_path: Path,
    fmt: str,
    store: str,
    settings: Settings,
    stages: str,
    select: tuple[str, frozenset[str]] | None,
    conflicts: dict[str, str],
    with_candidates: bool,
    with_dropped: bool,
):
    import ray.data

    bulk = settings.bulk
    if fmt == "parquet":
        files = [str(f) for f in parquet_files(input_path)]
        ds = ray.data.read_parquet(files, num_cpus=bulk.read_num_cpus)
    else:
        ds = ray.data.read_text(str(input_path), num_cpus=bulk.read_num_cpus).map_batches(
            parse_jsonl_lines, batch_size=None, batch_format="pyarrow", num_cpus=bulk.read_num_cpus
        )
    keep = None if select is None else select[0] == "keep"
    ids = None if select is None else pa.array(sorted(select[1]), pa.string())
    ds = ds.map_batches(
        select_rows,
        fn_kwargs={"keep": keep, "ids": ids, "conflicts": conflicts},
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=bulk.read_num_cpus,
    )
    # Blocks of one batch each: a map task turns its input blocks into one output block, so without
    # this a whole input file would cross every stage as one block and nothing would reach the
    # output (and survive a crash) until the last stage had finished all of it.
    ds = ds.repartition(target_num_rows_per_block=bulk.recall.batch_size).map_batches(
        EncodeRecallStage,
        fn_constructor_kwargs={
            "store": store,
            "settings": settings,
            "source": str(input_path),
            "final": stages == "recall",
        },
        batch_format="pyarrow",
        **_stage_args(bulk.recall),
    )
    if stages == "recall":
        return ds
    ds = ds.repartition(target_num_rows_per_block=bulk.generate.batch_size).map_batches(
        GenerateStage,
        fn_constructor_kwargs={"store": store, "settings": settings},
        batch_format="numpy",
        **_stage_args(bulk.generate),
    )
    return ds.repartition(target_num_rows_per_block=bulk.calibrate.batch_size).map_batches(
        CalibrateStage,
        fn_constructor_kwargs={
            "store": store,
            "settings": settings,
            "with_candidates": with_candidates,
            "with_dropped": with_dropped,
        },
        batch_format="numpy",
        **_stage_args(bulk.calibrate),
    )


@dataclass
class BulkReport:
    output: str
    input: int
    skipped_done: int
    tagged: int
    files: int
    seconds: float
    stages: str
    address: str | None
    rejected: int = 0
    rejects: str | None = None  # the file that lists them

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "input": self.input,
            "rejected": self.rejected,
            "rejects": self.rejects,
            "skipped_done": self.skipped_done,
            "tagged": self.tagged,
            "files": self.files,
            "seconds": round(self.seconds, 2),
            "items_per_s": round(self.tagged / self.seconds, 3) if self.seconds and self.tagged else None,
            "stages": self.stages,
            "address": self.address,
        }


def _batches(tables: Iterator[pa.Table], rows: int, seconds: float) -> Iterator[pa.Table]:
    """Regroup the stream into output files of ``rows`` rows, or fewer when ``seconds`` passed."""
    pending: list[pa.Table] = []
    count, since = 0, time.monotonic()
    for table in tables:
        if table.num_rows:
            pending.append(table)
            count += table.num_rows
        while count >= rows:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, rows)
            rest = merged.slice(rows)
            pending, count, since = ([rest] if rest.num_rows else []), rest.num_rows, time.monotonic()
        if pending and time.monotonic() - since >= seconds:
            yield pa.concat_tables(pending)
            pending, count, since = [], 0, time.monotonic()
    if pending:
        yield pa.concat_tables(pending)


def run_bulk(
    input_path: str | Path,
    output: str | Path,
    store: str | Path,
    settings: Settings,
    *,
    address: str | None = None,
    split: str | None = None,
    stages: str = "all",
    with_candidates: bool = False,
    with_dropped: bool = False,
) -> BulkReport:
    """Tag every input item not yet in ``output``; connect to Ray as ``connect`` does."""
    started = time.perf_counter()
    if stages not in STAGES:
        raise LLM4TagError(f"stages must be one of {', '.join(STAGES)}, got {stages!r}")
    source = Path(input_path)
    if not source.exists():
        raise DataError(str(source), "does not exist")
    if not Path(store).is_dir():
        raise LLM4TagError(f"store {store} does not exist")
    fmt = input_format(source)
    checked = check_input(source, fmt, split)
    wanted = checked.ids
    folder = OutputFolder(output)
    started_ray = False
    try:
        rejects = folder.write_rejects(checked.rejects)
        if not wanted and checked.rejects and split is None:
            raise DataError(
                str(source), f"every row was rejected ({len(checked.rejects)}); the reasons are in {rejects}"
            )
        done = folder.done_ids()
        pending = [i for i in wanted if i not in done]
        report = BulkReport(
            str(output),
            len(wanted),
            len(wanted) - len(pending),
            0,
            0,
            0.0,
            stages,
            None,
            rejected=len(checked.rejects),
            rejects=str(rejects),
        )
        if pending:
            report.address = connect(address, local_cpus=_local_cpus(settings, stages))
            started_ray = report.address != "current"
            ds = build_dataset(
                source,
                fmt,
                str(Path(store).resolve()),
                settings,
                stages,
                _selection(checked, done, pending, split),
                checked.conflicts,
                with_candidates,
                with_dropped,
            )
            stream = ds.iter_batches(batch_size=None, batch_format="pyarrow")
            written: set[str] = set()
            try:
                with step("bulk tag", total=len(wanted), initial=report.skipped_done) as bar:
                    for table in _batches(stream, settings.bulk.rows_per_file, settings.bulk.flush_seconds):
                        table = _first_rows(table, written)
                        if table.num_rows:
                            folder.write(table)
                            report.tagged += table.num_rows
                            bar.set_postfix_str(f"{folder.files} files written")
                            bar.update(table.num_rows)
            except Exception as exc:
                cause = _user_error(exc)
                if cause is not None:
                    raise cause from exc
                raise
        report.files = folder.files
        report.seconds = time.perf_counter() - started
        return report
    finally:
        folder.close()
        if started_ray:
            shutdown()


def _selection(
    checked: InputCheck, done: set[str], pending: list[str], split: str | None
) -> tuple[str, frozenset[str]] | None:
    """Only what the read tasks' filter must be told: the ids to keep, or the (fewer) ids to drop."""
    if split is not None:
        return ("keep", frozenset(pending))
    excluded = done & set(checked.ids)
    if not excluded:
        return None
    if len(excluded) < len(pending):
        return ("skip", frozenset(excluded))
    return ("keep", frozenset(pending))


def _first_rows(table: pa.Table, written: set[str]) -> pa.Table:
    """Drop rows of ids this run already wrote: rows repeating an accepted row exactly (same id and
    text) both pass the read filter, and are tagged alike; one is kept."""
    keep = []
    for item_id in table.column("id").to_pylist():
        keep.append(item_id not in written)
        written.add(item_id)
    return table if all(keep) else table.filter(pa.array(keep, pa.bool_()))


def _user_error(exc: BaseException) -> LLM4TagError | None:
    """The LLM4TagError (bad input row, bad store) behind Ray's wrapping of a failed task, if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, LLM4TagError):
            return LLM4TagError(str(current).splitlines()[-1]) if "\n" in str(current) else current
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def _local_cpus(settings: Settings, stages: str) -> float:
    """Logical CPUs for a fresh local cluster: at least the cores, and room for every actor at its
    pool's largest size plus the read. Ray Data's file-listing task asks for a whole CPU that no
    option lowers, so 3 half-CPU actors on a 2-core machine would leave it waiting forever; logical
    CPUs beyond the cores only share them (the stages mostly wait on each other anyway)."""
    bulk = settings.bulk
    used = [bulk.recall] if stages == "recall" else [bulk.recall, bulk.generate, bulk.calibrate]
    need = sum(s.num_cpus * (s.max_actors or s.actors) for s in used) + 1 + bulk.read_num_cpus
    return max(float(os.cpu_count() or 1), float(np.ceil(need)))


def connect(address: str | None = None, local_cpus: float | None = None) -> str:
    """Join ``address`` (or ``RAY_ADDRESS``) shipping this code along, or start a fresh local cluster.

    A Ray already initialised in this process (tests, notebooks) is used as it is.
    """
    import ray

    if ray.is_initialized():
        return "current"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        # "local" always starts a new cluster, never joins one that `ray start` left on this host.
        ray.init(address="local", num_cpus=local_cpus, include_dashboard=False, log_to_driver=False)
        return "local"
    import cluster
    import graph_store
    import llm4tag

    ray.init(
        address=address, runtime_env={"py_modules": [llm4tag, graph_store, cluster]}, log_to_driver=False
    )
    return address


def shutdown() -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.shutdown()
