"""`llm4tag retrain` end to end on the tiny model: promotion, "nothing new", and a refused promotion,
with the exit codes a cron job reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llm4tag.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "banking77"
DOMAIN = REPO / "configs" / "banking77.yaml"


def config(folder: Path, **retrain) -> Path:
    data = yaml.safe_load(DOMAIN.read_text())
    data["llm"] = {"model": "tiny", "batch_size": 4}
    data["finetune"] = {
        "data": {"max_items": 6},
        "cpu": {"max_steps": 1, "batch_size": 1, "grad_accum": 1, "eval_examples": 1},
        "retrain": {"holdout_fraction": 0.1, "holdout_max": 6, **retrain},
    }
    path = folder / f"config-{len(list(folder.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> Path:
    rows = [json.loads(line) for line in (SAMPLE / "train.jsonl").read_text().splitlines()][:80]
    path = tmp_path_factory.mktemp("retrain") / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_retrain_promotes_then_finds_nothing_new_then_refuses_a_worse_adapter(
    items, tmp_path, capsys, tiny_llm, encoder
):
    registry = tmp_path / "registry"
    base = [
        "retrain",
        "--items",
        str(items),
        "--tags",
        str(SAMPLE / "tags.jsonl"),
        "--adapters",
        str(registry),
    ]
    # Tolerance 1: any score is "not worse" than the base model's, so the first run promotes.
    assert main([*base, "--no-progress", "--config", str(config(tmp_path, tolerance=1.0))]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["status"] == "promoted" and report["held_out"] >= 1
    assert report["old"]["adapters"] == {"generator": None, "calibrator": None}
    assert report["new"]["metric"] == "f1" and "ece" in report["new"]
    active = json.loads((registry / "active.json").read_text())
    assert Path(active["generator"]).parent == registry / "generator"
    assert (Path(active["calibrator"]) / "adapter_model.safetensors").is_file()
    data = json.loads((Path(report["data"]["path"]) / "manifest.json").read_text())
    from llm4tag.finetune.retrain import in_holdout

    held = {i for i in (json.loads(x)["id"] for x in items.read_text().splitlines()) if in_holdout(i, 0.1)}
    assert held and not held & set(data["items"])  # held-out items are never trained on

    # Nothing changed: a cron run does nothing and succeeds.
    assert main([*base, "--no-progress", "--config", str(config(tmp_path))]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "nothing new"

    # Forced, with a bar no adapter can pass: trained, reported, not promoted, exit 3.
    strict = config(tmp_path, tolerance=-2.0, roles=["calibrator"])
    assert main([*base, "--no-progress", "--force", "--config", str(strict)]) == 3
    refused = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert refused["promoted"] is False and "old" in refused and "new" in refused
    assert json.loads((registry / "active.json").read_text())["calibrator"] == active["calibrator"]
    records = [json.loads(x) for x in (registry / "promotions.jsonl").read_text().splitlines()]
    assert [r["promoted"] for r in records] == [True, False]
