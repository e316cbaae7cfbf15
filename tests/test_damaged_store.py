"""A damaged store folder is refused with one clear error naming the file, never half-loaded: each
case damages one file of a copy of the sample store (cut short, missing, or changed in place with
its size kept, which only the manifest's checksum can tell) and opens it as `llm4tag tag` does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llm4tag.cli import main


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _remove(path: Path) -> None:
    path.unlink()


def _flip(path: Path) -> None:
    # One byte in the middle: the size is kept, so a reader that trusts the layout may not notice.
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CASES = [
    ("v000001/vertices.parquet", _cut),
    ("v000001/edges.parquet", _cut),
    ("v000001/edges.parquet", _remove),
    ("v000001/edges.parquet", _flip),
    ("v000001/contents.faiss", _remove),
    ("v000001/tags.faiss", _cut),
    ("v000001/contents.faiss", _flip),
    ("v000001/manifest.json", _remove),
    ("knowledge/samples/snapshot-*/vectors.npy", _cut),
    ("knowledge/samples/snapshot-*/vectors.npy", _remove),
    ("knowledge/domain/snapshot-*/records.jsonl", _flip),
    ("knowledge/samples/CURRENT", _remove),
]


@pytest.fixture(scope="module")
def settings():
    from llm4tag.config import settings_from_dict

    return settings_from_dict({"llm": {"model": "tiny"}})


@pytest.mark.parametrize(("pattern", "damage"), CASES, ids=[f"{p}-{d.__name__[1:]}" for p, d in CASES])
def test_damaged_store_is_refused_naming_the_file(sample_store, settings, tmp_path, pattern, damage):
    from graph_store import StoreError
    from llm4tag.errors import LLM4TagError
    from llm4tag.pipeline import TaggingPipeline

    copy = tmp_path / "store"
    shutil.copytree(sample_store, copy)
    (target,) = copy.glob(pattern)
    damage(target)
    with pytest.raises((StoreError, LLM4TagError)) as caught:
        TaggingPipeline.open(str(copy), settings, load_engine=False)
    message = str(caught.value)
    named = target.name if target.name != "CURRENT" else str(target.parent)
    assert named in message, message
    assert "\n" not in message


def test_intact_copy_loads(sample_store, settings, tmp_path):
    from llm4tag.pipeline import TaggingPipeline

    copy = tmp_path / "store"
    shutil.copytree(sample_store, copy)
    pipeline = TaggingPipeline.open(str(copy), settings, load_engine=False)
    assert pipeline.recaller.store.graph.num_tags > 0


def test_cli_refuses_a_damaged_store_with_one_line(sample_store, tmp_path, capsys):
    copy = tmp_path / "store"
    shutil.copytree(sample_store, copy)
    _flip(copy / "v000001" / "vertices.parquet")
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "text": "my card has not arrived"}\n')
    argv = ["tag", "--store", str(copy), "--input", str(items), "--output", str(tmp_path / "out.jsonl")]
    assert main([*argv, "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "v000001/vertices.parquet" in err[0], err
    assert not (tmp_path / "out.jsonl").exists()
