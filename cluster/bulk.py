"""Bulk offline tagging on Ray Data: Parquet/JSONL in, a folder of Parquet files out, resumable.

    pass 1: read (Parquet or JSONL) -> RouteStage -> driver: rows the ranker settled -> output files
                                                               items routed to the LLM -> DIR/.routed/
    pass 2: read DIR/.routed/ -> GenerateStage -> JudgeStage (rows) -> driver writes output files

Each stage is an actor pool that runs one of the tag flow's sub-flows (llm4tag/flow.py) on the
pipeline's own stage methods, so its rows equal those of ``TaggingPipeline.tag`` and of the Serve
ingress under the same settings: ``route_flow`` (encode, search, rank, route), ``generate_flow`` (the
LLM, for the items routed to it; judging too where the judgments continue its conversations), then
``judge_flow`` and the rows (``tagged_rows``). Nothing here orders stages or routes items: the flow
does. The route stage writes the rows of the items the ranker settled itself, so only the items
routed to the LLM reach an LLM actor, and LLM actors start only when some were routed (none at all
when the store's route plan sends nothing). ``stages="recall"``: graph recall's candidates only
(``llm4tag recall``'s rows).

Between stages the data are Arrow-friendly columns: the vector as a tensor column of float32, routes,
generations and verdicts as JSON text (their optional fields make structs awkward).

Output: the driver, not the workers, writes the files. Each file is written under a hidden temporary
name, fsynced and renamed into place, so a file in the folder is always complete; a rerun reads the ids of
those files and tags only the rest. The routed items wait for pass 2 in complete files too
(``DIR/.routed/``), so a rerun neither routes them again nor loses them; the folder goes once they are
all in the output. Writing on the driver also keeps the output and the resume check on
one filesystem when the cluster is remote (``ray://``), where worker-side files would land on the nodes.
Tagging rows are small next to the LLM work that makes them, so the driver is not the bottleneck.
The files (output schema, output folder, input) are cluster/bulk_files.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.bulk_files import (
    InputCheck,
    OutputFolder,
    check_input,
    input_format,
    output_files,
    output_schema,
    parquet_files,
    parse_jsonl_lines,
    select_rows,
    to_item,
)
from graph_store import read_vocabulary
from llm4tag import flow
from llm4tag.calibrator import Judged
from llm4tag.config import BulkStage, Settings
from llm4tag.errors import DataError, LLM4TagError
from llm4tag.generator import Generation
from llm4tag.pipeline import TaggingPipeline
from llm4tag.progress import Bar, step
from llm4tag.ranking.cascade import ItemRoute
from llm4tag.ranking.store_routing import routes_nothing

STAGES = ("all", "recall")
Answer = Callable[[flow.Call], Any]

# --- the columns between the stages


def routed_columns(routed: flow.Routed) -> dict[str, np.ndarray]:
    return {
        "id": np.array(routed.ids, dtype=object),
        "content": np.array(routed.contents, dtype=object),
        "vector": routed.vectors,
        "route": np.array([json.dumps(r.to_dict()) for r in routed.routes], dtype=object),
    }


def routed_of(batch: dict[str, np.ndarray]) -> flow.Routed:
    vectors = batch["vector"]
    if vectors.dtype == object:  # read back from the routed items' Parquet files: one array per row
        vectors = np.stack(list(vectors)) if len(vectors) else np.zeros((0, 0), np.float32)
    return flow.Routed(
        [str(i) for i in batch["id"]],
        [str(c) for c in batch["content"]],
        np.ascontiguousarray(vectors, dtype=np.float32),
        [ItemRoute.from_dict(json.loads(r)) for r in batch["route"]],
    )


def routed_file_table(batch: dict[str, np.ndarray], keep: np.ndarray) -> pa.Table:
    """The routed columns of the rows ``keep`` selects, as plain Parquet: the vector a fixed-size list
    of float32 (not Ray Data's tensor type), read back by :func:`routed_of`."""
    vectors = np.asarray(batch["vector"][keep], np.float32)
    dim = int(batch["vector"].shape[1]) if batch["vector"].ndim == 2 else 0
    return pa.table(
        {
            "id": pa.array([str(i) for i in batch["id"][keep]], pa.string()),
            "content": pa.array([str(c) for c in batch["content"][keep]], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
            "route": pa.array([str(r) for r in batch["route"][keep]], pa.string()),
        }
    )


def generated_columns(generated: flow.Generated) -> dict[str, np.ndarray]:
    """A generation or verdicts not made (the item was not sent, or not judged yet) is ""."""
    return {
        "generation": np.array(
            [json.dumps(asdict(g)) if g is not None else "" for g in generated.generations], dtype=object
        ),
        "verdicts": np.array(
            [json.dumps([asdict(v) for v in vs]) if vs is not None else "" for vs in generated.verdicts],
            dtype=object,
        ),
    }


def generated_of(batch: dict[str, np.ndarray]) -> flow.Generated:
    return flow.Generated(
        [Generation(**json.loads(g)) if g else None for g in batch["generation"]],
        [[Judged(**v) for v in json.loads(vs)] if vs else None for vs in batch["verdicts"]],
    )


def _empty_routed(dim: int) -> dict[str, np.ndarray]:
    # Same columns and vector width as a full batch, so the blocks' schemas still unify.
    empty = np.array([], dtype=object)
    return {"id": empty, "content": empty, "vector": np.zeros((0, dim), np.float32), "route": empty}


# --- each stage runs one sub-flow (the functions are the stages' work; the classes open the store)


def route_step(items: list, options: flow.FlowOptions, answer: Answer) -> flow.Routed:
    return flow.run(flow.route_flow(items, options), answer)


def generate_step(routed: flow.Routed, options: flow.FlowOptions, answer: Answer) -> flow.Generated:
    return flow.run(flow.generate_flow(routed, options), answer)


def judge_step(
    routed: flow.Routed, generated: flow.Generated, options: flow.FlowOptions, answer: Answer
) -> flow.Generated:
    return flow.run(flow.judge_flow(routed, generated, options), answer)


@dataclass(frozen=True)
class RowOptions:
    """What the output rows carry (``llm4tag tag --candidates/--dropped``) and the files' schema."""

    with_candidates: bool
    with_dropped: bool
    with_raw: bool

    @property
    def schema(self) -> pa.Schema:
        return output_schema("all", self.with_candidates, self.with_dropped, self.with_raw)

    def table(self, routed: flow.Routed, generated: flow.Generated, options: flow.FlowOptions) -> pa.Table:
        tagged = flow.tagged_rows(routed, generated, options.plan, self.with_candidates, self.with_dropped)
        return pa.Table.from_pylist(tagged.rows, schema=self.schema)

    def settled(self, rows: np.ndarray) -> pa.Table:
        """The output rows the route stage wrote (as JSON) for the items the ranker settled."""
        return pa.Table.from_pylist([json.loads(row) for row in rows if row], schema=self.schema)


class RouteStage:
    """CPU: ``route_flow``, then the output row of every item the ranker settled (column ``row``, the
    row as JSON) and the routed columns of the items routed to the LLM (``row`` empty). ``only_rows``
    (the route plan sends nothing to the LLM): the output rows themselves."""

    def __init__(self, store: str, settings: Settings, source: str, rows: RowOptions, only_rows: bool):
        self.pipeline = TaggingPipeline.open(store, settings, load_engine=False)
        self.source, self.rows, self.only_rows = source, rows, only_rows

    def __call__(self, batch: pa.Table) -> pa.Table | dict[str, np.ndarray]:
        items = [to_item(r, self.source) for r in batch.to_pylist()]
        options = self.pipeline.options
        if not items:
            if self.only_rows:
                return self.rows.schema.empty_table()
            return _empty_routed(self.pipeline.recaller.encoder.dim) | {"row": np.array([], dtype=object)}
        routed = route_step(items, options, self.pipeline.answer)
        nothing = flow.Generated([None] * len(items), [None] * len(items))
        tagged = flow.tagged_rows(
            routed, nothing, options.plan, self.rows.with_candidates, self.rows.with_dropped
        )
        if self.only_rows:
            return pa.Table.from_pylist(tagged.rows, schema=self.rows.schema)
        settled = [
            json.dumps(row) if not route.needs_llm else ""
            for row, route in zip(tagged.rows, routed.routes, strict=True)
        ]
        return routed_columns(routed) | {"row": np.array(settled, dtype=object)}


class GenerateStage:
    """LLM: ``generate_flow`` (no graph, no encoder); the items the ranker settled pass through."""

    def __init__(self, store: str, settings: Settings):
        # Judging here only where the judgments continue this stage's conversations.
        judges = settings.judges_with_generation
        self.pipeline = TaggingPipeline.open(
            store, settings.with_overrides({"pipeline": {"calibrate": judges}}), load_graph=False
        )
        # The flow's options are the job's settings (its pipeline's differ only in what it computes).
        self.options = flow.FlowOptions.of(settings, self.pipeline.tag_names, self.pipeline.plan)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        routed = routed_of(batch)
        generated = generate_step(routed, self.options, self.pipeline.answer)
        return routed_columns(routed) | generated_columns(generated)


class JudgeStage:
    """LLM (where generation did not judge): ``judge_flow``, then the output rows."""

    def __init__(self, store: str, settings: Settings, rows: RowOptions):
        # A model only where this stage judges (not judged by the generate stage, and calibrating).
        judges_here = settings.pipeline.calibrate and not settings.judges_with_generation
        self.pipeline = TaggingPipeline.open(store, settings, load_graph=False, load_engine=judges_here)
        self.rows = rows

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        options = self.pipeline.options
        routed = routed_of(batch)
        generated = judge_step(routed, generated_of(batch), options, self.pipeline.answer)
        return self.rows.table(routed, generated, options)


class RecallStage:
    """CPU, ``stages="recall"``: graph recall's candidates (``llm4tag recall``'s rows), no routing."""

    def __init__(self, store: str, settings: Settings, source: str):
        self.pipeline = TaggingPipeline.open(store, settings, load_engine=False)
        self.source = source

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [to_item(r, self.source) for r in batch.to_pylist()]
        schema = output_schema("recall", False, False, False)
        if not items:
            return schema.empty_table()
        _, vectors = self.pipeline.encode(items)
        rows = [
            {"id": i.id, "candidates": [c.to_dict() for c in cands]}
            for i, cands in zip(items, self.pipeline.recall(vectors), strict=True)
        ]
        return pa.Table.from_pylist(rows, schema=schema)


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
    rows: RowOptions,
    only_rows: bool,
):
    """Pass 1: the input items not done yet, routed (``RouteStage``); ``only_rows`` where the route
    plan sends nothing to the LLM."""
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
    ds = ds.repartition(target_num_rows_per_block=bulk.recall.batch_size)
    source = str(input_path)
    if stages == "recall":
        return ds.map_batches(
            RecallStage,
            fn_constructor_kwargs={"store": store, "settings": settings, "source": source},
            batch_format="pyarrow",
            **_stage_args(bulk.recall),
        )
    return ds.map_batches(
        RouteStage,
        fn_constructor_kwargs={
            "store": store,
            "settings": settings,
            "source": source,
            "rows": rows,
            "only_rows": only_rows,
        },
        batch_format="pyarrow",
        **_stage_args(bulk.recall),
    )


def drop_ids(block: pa.Table, ids: pa.Array) -> pa.Table:
    return block.filter(pc.invert(pc.fill_null(pc.is_in(block.column("id"), value_set=ids), False)))


def llm_dataset(routed: Path, store: str, settings: Settings, rows: RowOptions, skip: frozenset[str]):
    """Pass 2: the items routed to the LLM (the files pass 1 wrote), less ``skip`` (already in the
    output), through the LLM stages to their rows."""
    import ray.data

    bulk = settings.bulk
    ds = ray.data.read_parquet([str(f) for f in output_files(routed)], num_cpus=bulk.read_num_cpus)
    if skip:
        ds = ds.map_batches(
            drop_ids,
            fn_kwargs={"ids": pa.array(sorted(skip), pa.string())},
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=bulk.read_num_cpus,
        )
    ds = ds.repartition(target_num_rows_per_block=bulk.generate.batch_size).map_batches(
        GenerateStage,
        fn_constructor_kwargs={"store": store, "settings": settings},
        batch_format="numpy",
        **_stage_args(bulk.generate),
    )
    return ds.repartition(target_num_rows_per_block=bulk.calibrate.batch_size).map_batches(
        JudgeStage,
        fn_constructor_kwargs={"store": store, "settings": settings, "rows": rows},
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
    sent_to_llm: int = 0  # rows this run wrote through the LLM stages

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "input": self.input,
            "rejected": self.rejected,
            "rejects": self.rejects,
            "skipped_done": self.skipped_done,
            "tagged": self.tagged,
            "sent_to_llm": self.sent_to_llm,
            "files": self.files,
            "seconds": round(self.seconds, 2),
            "items_per_s": round(self.tagged / self.seconds, 3) if self.seconds and self.tagged else None,
            "stages": self.stages,
            "address": self.address,
        }


class Regroup:
    """Regroups a stream of tables into files of ``rows`` rows, or fewer when ``seconds`` passed since
    the last file (a slow stream still reaches disk, and survives a crash)."""

    def __init__(self, rows: int, seconds: float):
        self.rows, self.seconds = rows, seconds
        self.pending: list[pa.Table] = []
        self.count, self.since = 0, time.monotonic()

    def add(self, table: pa.Table | None) -> Iterator[pa.Table]:
        if table is not None and table.num_rows:
            self.pending.append(table)
            self.count += table.num_rows
        while self.count >= self.rows:
            merged = pa.concat_tables(self.pending)
            yield merged.slice(0, self.rows)
            rest = merged.slice(self.rows)
            self.pending, self.count = ([rest] if rest.num_rows else []), rest.num_rows
            self.since = time.monotonic()
        if self.pending and time.monotonic() - self.since >= self.seconds:
            yield from self.rest()

    def rest(self) -> Iterator[pa.Table]:
        if self.pending:
            yield pa.concat_tables(self.pending)
        self.pending, self.count, self.since = [], 0, time.monotonic()


def _batches(tables: Iterator[pa.Table], rows: int, seconds: float) -> Iterator[pa.Table]:
    """Regroup the stream into output files of ``rows`` rows, or fewer when ``seconds`` passed."""
    regroup = Regroup(rows, seconds)
    for table in tables:
        yield from regroup.add(table)
    yield from regroup.rest()


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
        routed = folder.routed_ids()  # routed to the LLM by an earlier run, waiting for pass 2
        pending = [i for i in wanted if i not in done and i not in routed]
        waiting = routed - done
        report = BulkReport(
            str(output),
            len(wanted),
            len(wanted) - len(pending) - len(waiting),
            0,
            0,
            0.0,
            stages,
            None,
            rejected=len(checked.rejects),
            rejects=str(rejects),
        )
        store = str(Path(store).resolve())
        rows = RowOptions(with_candidates, with_dropped, with_raw=not settings.pipeline.constrained)
        # The route plan as every stage opens it: nothing for the LLM, the route stage writes every row.
        only_rows = stages == "recall" or routes_nothing(
            store, read_vocabulary(store).encoder_id, route=settings.pipeline.route
        )
        written: set[str] = set()
        try:
            with step("bulk tag", total=len(wanted), initial=report.skipped_done) as bar:
                if pending:
                    report.address = connect(address, local_cpus=_local_cpus(settings, stages, only_rows))
                    started_ray = report.address != "current"
                    ds = build_dataset(
                        source,
                        fmt,
                        store,
                        route_stage_settings(settings, report.address),
                        stages,
                        _selection(checked, done | routed, pending, split),
                        checked.conflicts,
                        rows,
                        only_rows,
                    )
                    if only_rows:
                        stream = ds.iter_batches(batch_size=None, batch_format="pyarrow")
                        report.tagged += _write(folder, stream, settings, written, bar)
                    else:
                        report.tagged += _route(folder, ds, rows, settings, written, bar)
                    waiting = folder.routed_ids() - done - written
                if waiting:
                    # Pass 2: LLM actors start now, for the routed items only.
                    if report.address is None:
                        report.address = connect(address, local_cpus=_local_cpus(settings, stages, False))
                        started_ray = report.address != "current"
                    skip = frozenset(folder.routed_ids() - waiting)
                    ds = llm_dataset(folder.routed, store, settings, rows, skip)
                    stream = ds.iter_batches(batch_size=None, batch_format="pyarrow")
                    sent = _write(folder, stream, settings, written, bar)
                    report.tagged += sent
                    report.sent_to_llm = sent
                folder.drop_routed()  # every routed item is in the output now
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


def _write(
    folder: OutputFolder, stream: Iterator[pa.Table], settings: Settings, written: set[str], bar: Bar
) -> int:
    """Output files of the stream's rows (each id once); the number written."""
    tables = _batches(stream, settings.bulk.rows_per_file, settings.bulk.flush_seconds)
    return sum(_write_rows(folder, table, written, bar) for table in tables)


def _write_rows(folder: OutputFolder, table: pa.Table, written: set[str], bar: Bar) -> int:
    """One output file of the table's rows not written yet by this run; the number written."""
    table = _first_rows(table, written)
    if not table.num_rows:
        return 0
    folder.write(table)
    bar.update(table.num_rows)
    bar.set_postfix_str(f"{folder.files} files written")
    return table.num_rows


def _route(
    folder: OutputFolder, ds, rows: RowOptions, settings: Settings, written: set[str], bar: Bar
) -> int:
    """Pass 1 of a plan that sends items to the LLM: the rows the ranker settled into output files, the
    items routed to the LLM into the routed files; the number of output rows written."""
    bulk = settings.bulk
    settled, routed, count = (
        Regroup(bulk.rows_per_file, bulk.flush_seconds),
        Regroup(bulk.rows_per_file, bulk.flush_seconds),
        0,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        sent = np.array([row == "" for row in batch["row"]], bool)
        for table in settled.add(rows.settled(batch["row"])):
            count += _write_rows(folder, table, written, bar)
        for table in routed.add(routed_file_table(batch, sent) if sent.any() else None):
            folder.write_routed(table)
    for table in settled.rest():
        count += _write_rows(folder, table, written, bar)
    for table in routed.rest():
        folder.write_routed(table)
    return count


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


def _local_cpus(settings: Settings, stages: str, only_rows: bool) -> float:
    """Logical CPUs for a fresh local cluster: at least the cores, and room for every actor at its
    pool's largest size plus the read. Ray Data's file-listing task asks for a whole CPU that no
    option lowers, so 3 half-CPU actors on a 2-core machine would leave it waiting forever; logical
    CPUs beyond the cores only share them (the stages mostly wait on each other anyway)."""
    bulk = settings.bulk
    used = [bulk.recall] if only_rows else [bulk.recall, bulk.generate, bulk.calibrate]
    need = sum(s.num_cpus * (s.max_actors or s.actors) for s in used) + 1 + bulk.read_num_cpus
    return max(float(os.cpu_count() or 1), float(np.ceil(need)))


def route_stage_settings(settings: Settings, address: str) -> Settings:
    """The settings of pass 1's actors. On a cluster this job started on this machine they run alone
    (the LLM actors start in pass 2), so with ``encoder.threads: auto``, which in a Ray worker means
    the one thread Ray gives it, each encodes on its share of the cores: one actor on two threads
    tagged 1.48x the items/s of one thread, and 1.18x two actors of one (docs/performance.md). On a
    joined cluster a node's other work is unknown: one thread each, or what encoder.threads says."""
    if address != "local" or settings.encoder.threads != "auto":
        return settings
    actors = settings.bulk.recall.max_actors or settings.bulk.recall.actors
    return settings.with_overrides({"encoder": {"threads": max(1, len(os.sched_getaffinity(0)) // actors)}})


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
