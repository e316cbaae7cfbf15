"""Fine-tuning: training data built as inference sees items (no leaks), a real LoRA run on the tiny
model (loss goes down, checkpoints resume deterministically), adapters loaded by the engines."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from llm4tag.cli import main
from llm4tag.config import settings_from_dict
from llm4tag.data import Item
from llm4tag.errors import ConfigError, LLM4TagError
from llm4tag.finetune.training_data import _balanced, inject, merge_feedback, select_items
from llm4tag.knowledge import Sample

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "banking77"
DOMAIN = REPO / "configs" / "banking77.yaml"

# --- pure logic


def test_diverse_selection_covers_every_tag_then_spreads_out():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tags = [[f"t{i % 5}"] for i in range(60)]
    picked = select_items(tags, vectors, 12, "diverse", seed=1)
    assert len(picked) == len(set(picked)) == 12
    assert {tags[i][0] for i in picked[:5]} == {f"t{k}" for k in range(5)}
    # Farthest-point after coverage: each later pick is the item farthest from those before it.
    chosen = vectors[picked[:6]]
    distances = 1.0 - (vectors @ chosen.T).max(axis=1)
    assert picked[6] == int(np.argmax(distances))
    assert select_items(tags, vectors, 12, "diverse", seed=1) == picked  # deterministic
    balanced = select_items(tags, vectors, 10, "balanced", seed=1)
    counts = {f"t{k}": sum(tags[i][0] == f"t{k}" for i in balanced) for k in range(5)}
    assert set(counts.values()) == {2}
    assert select_items(tags, vectors, None, "diverse", seed=1) == list(range(60))


def test_a_missing_gold_tag_is_injected_at_a_random_position_keeping_the_length():
    names = [f"c{i}" for i in range(5)]
    out = inject(names, ["gold"], {"gold"}, random.Random(3), limit=5)
    assert len(out) == 5 and "gold" in out and "c4" not in out
    positions = {inject(names, ["gold"], {"gold"}, random.Random(s), 5).index("gold") for s in range(30)}
    assert len(positions) > 2


def test_calibrator_examples_are_balanced_and_keep_reviewed_negatives():
    from llm4tag.finetune.examples import Example

    examples = [Example("calibrator", str(i), [], "Yes") for i in range(3)]
    examples += [Example("calibrator", str(i), [], "No", {"why": "recalled"}) for i in range(6)]
    examples += [Example("calibrator", "r", [], "No", {"why": "feedback"})]
    out = _balanced(examples, random.Random(0))
    assert sum(e.answer == "Yes" for e in out) == sum(e.answer == "No" for e in out) == 3
    assert any(e.meta.get("why") == "feedback" for e in out)


def test_feedback_overrides_an_annotation_and_adds_reviewed_items():
    items = [Item("a", "text a", ("x",)), Item("b", "text b", ("y", "z"))]
    feedback = [
        Sample("a", "text a", ("w",), ("x",), "feedback"),
        Sample("b", "text b", (), ("z",), "feedback"),
        Sample("c", "text c", ("y",), (), "feedback"),
    ]
    merged, incorrect, reviewed = merge_feedback(items, feedback)
    by_id = {i.id: i for i in merged}
    assert by_id["a"].tags == ("w",) and by_id["b"].tags == ("y",) and by_id["c"].tags == ("y",)
    assert incorrect == {"a": ("x",), "b": ("z",)} and reviewed == {"a", "b", "c"}


def test_unreviewed_feedback_trains_but_never_decides_promotion():
    """Issue 18: unreviewed HTTP feedback replaced the labels of held-out items and added held-out
    items, so whoever held a write key could choose the promoted adapter."""
    from llm4tag.finetune.retrain import in_holdout, promotion_split

    ids = [f"item-{n}" for n in range(200)]
    held_ids = [i for i in ids if in_holdout(i, 0.5)]
    kept_ids = [i for i in ids if not in_holdout(i, 0.5)]
    annotated = [Item(i, f"text {i}", ("x",)) for i in held_ids[:3] + kept_ids[:2]]
    relabelled, reviewed_one, train_one = held_ids[0], held_ids[1], kept_ids[0]
    new_held, new_reviewed = held_ids[10], held_ids[11]
    feedback = [
        Sample(relabelled, "t", ("poison",), ("x",), "feedback", sender="key-0123abcd"),
        Sample(reviewed_one, "t", ("y",), ("x",), "feedback", sender="key-0123abcd", reviewer="ann"),
        Sample(train_one, "t", ("poison",), (), "feedback", sender="key-0123abcd"),
        Sample(new_held, "t", ("poison",), (), "feedback", sender="key-0123abcd"),
        Sample(new_reviewed, "t", ("y",), (), "feedback", reviewer="ann"),
    ]
    train, held = promotion_split(annotated, feedback, 0.5, None)
    held_tags = {i.id: i.tags for i in held}
    assert held_tags == {relabelled: ("x",), reviewed_one: ("y",), held_ids[2]: ("x",), new_reviewed: ("y",)}
    assert "poison" not in {t for tags in held_tags.values() for t in tags}
    train_tags = {i.id: i.tags for i in train}
    assert train_tags == {train_one: ("poison",), kept_ids[1]: ("x",)}  # feedback still trains
    assert not set(train_tags) & set(held_tags)
    assert len(promotion_split(annotated, feedback, 0.5, 2)[1]) == 2


def test_feedback_samples_keep_who_sent_and_who_reviewed_them():
    sent = Sample("a", "text a", ("x",), (), "feedback", sender="labeller-1")
    assert not sent.reviewed and Sample.from_record(sent.to_record()) == sent
    decided = Sample("a", "text a", ("y",), (), "feedback", sender="labeller-1", reviewer="ann")
    assert decided.reviewed and Sample.from_record(decided.to_record()) == decided
    assert sent.merged(decided).reviewer == "ann"
    assert not decided.merged(sent).reviewed  # unreviewed tags came in after the review
    assert "sender" not in Sample("b", "text b", ("x",)).to_record()  # annotations carry neither
    with pytest.raises(ValueError, match="reviewer"):
        Sample("a", "text a", ("x",), (), "feedback", reviewer=" ")


def test_finetune_config_is_data_and_typos_are_errors():
    settings = settings_from_dict({"finetune": {"cpu": {"max_steps": 3}, "lora": {"r": 4}}})
    assert settings.finetune.cpu.max_steps == 3 and settings.finetune.cpu.batch_size == 2  # cpu defaults kept
    assert settings.finetune.gpu.dtype == "bfloat16"
    for bad in (
        {"cpu": {"max_stepz": 1}},
        {"data": {"selection": "best"}},
        {"lora": {"r": 0}},
        {"devices": 1},
    ):
        with pytest.raises(ConfigError):
            settings_from_dict({"finetune": bad})


# --- training data from real items (real encoder, real graph store)


@pytest.fixture(scope="module")
def split_items(tmp_path_factory) -> Path:
    """120 sample items with a split field: 90 train, 30 test."""
    rows = [json.loads(line) for line in (SAMPLE / "train.jsonl").read_text().splitlines()][:120]
    for index, row in enumerate(rows):
        row["split"] = "test" if index % 4 == 0 else "train"
    path = tmp_path_factory.mktemp("items") / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def train_data(split_items, encoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "data"
    argv = [
        "train-data",
        "--items",
        str(split_items),
        "--tags",
        str(SAMPLE / "tags.jsonl"),
        "--out",
        str(out),
    ]
    assert main([*argv, "--max-items", "40", "--config", str(DOMAIN)]) == 0
    return out


def test_training_data_never_shows_a_test_item_or_the_item_itself(split_items, train_data):
    rows = [json.loads(line) for line in split_items.read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"]
    train_texts = {r["id"]: r["text"] for r in rows if r["split"] == "train"}
    manifest = json.loads((train_data / "manifest.json").read_text())
    assert manifest["counts"]["generator"] == 40 and len(manifest["hash"]) == 64
    assert manifest["stats"]["pool"] == 90
    generator = [json.loads(x) for x in (train_data / "generator.jsonl").read_text().splitlines()]
    calibrator = [json.loads(x) for x in (train_data / "calibrator.jsonl").read_text().splitlines()]
    everything = (train_data / "generator.jsonl").read_text() + (train_data / "calibrator.jsonl").read_text()
    for row in test:
        assert f'"{row["id"]}"' not in everything and json.dumps(row["text"])[1:-1] not in everything
    for example in generator:
        prompt = example["messages"][1]["content"]
        own = " ".join(train_texts[example["id"]].split())  # prompts normalise whitespace
        # The item's text is the item, once; never also one of its retrieved samples.
        assert prompt.count(own) == 1 and f'"{own}"' not in prompt
        assert example["id"] not in example["meta"]["samples"] and len(example["meta"]["samples"]) == 3
        # The answer is a gold tag among the candidates shown (constrained decoding's spelling).
        assert example["meta"]["gold"][0] in example["meta"]["candidates"]
        assert example["answer"] == example["meta"]["gold"][0].replace("_", " ")
        assert "Candidate tags: " in prompt and example["answer"] in prompt.split("Candidate tags: ")[1]
    answers = [c["answer"] for c in calibrator]
    assert answers.count("Yes") == answers.count("No") > 0


def test_train_data_bad_input_exits_2_with_one_line(tmp_path, capsys):
    code = main(
        [
            "train-data",
            "--items",
            str(tmp_path / "missing.jsonl"),
            "--tags",
            str(SAMPLE / "tags.jsonl"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("llm4tag train-data: error:")
    assert main(["train", "calibrator", "--data", str(tmp_path), "--out", str(tmp_path / "a")]) == 2
    assert "not a training data folder" in capsys.readouterr().err


# --- a real LoRA run on the tiny model


TINY_TRAIN = {
    "finetune": {
        "cpu": {
            "max_steps": 4,
            "batch_size": 4,
            "grad_accum": 1,
            "learning_rate": 0.003,
            "checkpoint_every": 2,
            "eval_examples": 8,
            "max_length": 256,
        },
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "seed": 7,
    },
    "llm": {"model": "tiny", "batch_size": 4},
}


@pytest.fixture(scope="module")
def calibrator_adapter(tiny_llm, train_data, tmp_path_factory):
    from llm4tag.finetune.train import train

    out = tmp_path_factory.mktemp("adapters") / "calibrator"
    manifest = train("calibrator", train_data, out, settings_from_dict(TINY_TRAIN), progress=False)
    return out, manifest


@pytest.mark.slow
def test_lora_training_lowers_the_loss_and_writes_an_adapter_with_its_manifest(
    calibrator_adapter, train_data
):
    out, manifest = calibrator_adapter
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    written = json.loads((out / "training_manifest.json").read_text())
    assert written == manifest
    assert manifest["loss_after"] < manifest["loss_before"]
    assert manifest["steps"] == 4 and len(manifest["losses"]) == 4 and manifest["seed"] == 7
    assert manifest["data"]["hash"] == json.loads((train_data / "manifest.json").read_text())["hash"]
    assert manifest["base_model"]["name"] == "tiny" and manifest["peak_memory_mb"] > 0
    assert not out.with_name(out.name + ".work").exists()  # checkpoints gone once the adapter is written
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_result(
    calibrator_adapter, train_data, tmp_path
):
    from llm4tag.errors import LLM4TagError
    from llm4tag.finetune.train import train

    settings = settings_from_dict(TINY_TRAIN)
    out = tmp_path / "resumed"
    first = train("calibrator", train_data, out, settings, progress=False, stop_after=3)
    assert first["interrupted_at_step"] == 3 and not out.exists()
    assert (tmp_path / "resumed.work" / "step-0000003" / "state.json").is_file()
    manifest = train("calibrator", train_data, out, settings, progress=False)
    assert manifest["resumed_from_step"] == 3
    reference = calibrator_adapter[1]["losses"]
    assert manifest["losses"] == pytest.approx(reference, rel=1e-3, abs=1e-4)
    with pytest.raises(LLM4TagError, match="never overwritten"):
        train("calibrator", train_data, out, settings, progress=False)


@pytest.mark.slow
def test_the_transformers_engine_loads_swaps_and_drops_the_adapter(calibrator_adapter, train_data):
    from llm4tag.engines import LLMConfig, make_engine
    from llm4tag.errors import ModelError
    from llm4tag.finetune.examples import read_training_data

    out, _ = calibrator_adapter
    examples, _ = read_training_data(train_data, "calibrator")
    prompts = [e.messages for e in examples[:8]]
    engine = make_engine(LLMConfig(model="tiny", engine="transformers", batch_size=4))
    try:
        base = [s.confidence for s in engine.score_yes_no(prompts)]
        info = engine.adapters.load("calibrator", out)
        assert info.rank == 4 and engine.adapters.describe()["calibrator"]["path"] == str(out)
        tuned = [s.confidence for s in engine.score_yes_no(prompts)]
        assert tuned != pytest.approx(base, abs=1e-4)
        with pytest.raises(ModelError, match="calibrator adapter, not a generator"):
            engine.adapters.load("generator", out)
        engine.adapters.load("calibrator", None)
        assert [s.confidence for s in engine.score_yes_no(prompts)] == pytest.approx(base, abs=1e-5)
    finally:
        engine.close()
    # From config, as serving starts it.
    config = LLMConfig(model="tiny", engine="transformers", batch_size=4, calibrator_adapter=str(out))
    engine = make_engine(config)
    try:
        assert [s.confidence for s in engine.score_yes_no(prompts)] == pytest.approx(tuned, abs=1e-5)
    finally:
        engine.close()


@pytest.mark.slow
def test_the_vllm_engine_serves_the_adapter_through_lora_requests(calibrator_adapter, train_data):
    pytest.importorskip("vllm")
    from llm4tag.engines import LLMConfig, make_engine
    from llm4tag.finetune.examples import read_training_data

    out, _ = calibrator_adapter
    prompts = [e.messages for e in read_training_data(train_data, "calibrator")[0][:4]]
    engine = make_engine(LLMConfig(model="tiny", engine="vllm", calibrator_adapter=str(out)))
    try:
        assert engine.adapters.describe()["calibrator"]["rank"] == 4
        assert len(engine.score_yes_no(prompts)) == 4
    finally:
        engine.close()


def test_reviewed_feedback_in_the_store_is_mixed_into_the_training_data(sample_store, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(sample_store, store)
    rows = [json.loads(line) for line in (SAMPLE / "train.jsonl").read_text().splitlines()]
    other = next(r["tags"][0] for r in rows if r["tags"][0] != rows[0]["tags"][0])
    reviewed = {
        "id": rows[0]["id"],
        "text": rows[0]["text"],
        "tags": [other],
        "incorrect_tags": rows[0]["tags"],
    }
    new = {"id": "reviewed-new", "text": "please close my account for good", "tags": ["terminate_account"]}
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(json.dumps(reviewed) + "\n" + json.dumps(new) + "\n")
    assert main(["feedback", "--store", str(store), "--input", str(feedback), "--config", str(DOMAIN)]) == 0
    out = tmp_path / "data"
    argv = ["train-data", "--items", str(SAMPLE / "train.jsonl"), "--tags", str(SAMPLE / "tags.jsonl")]
    assert (
        main([*argv, "--out", str(out), "--store", str(store), "--selection", "all", "--config", str(DOMAIN)])
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["feedback_ids"] == sorted([rows[0]["id"], "reviewed-new"])
    assert manifest["stats"]["feedback_items"] == 2 and manifest["stats"]["pool"] == 401
    generator = {e["id"]: e for e in map(json.loads, (out / "generator.jsonl").read_text().splitlines())}
    assert generator[rows[0]["id"]]["meta"]["gold"] == [other]  # the reviewer wins
    assert generator[rows[0]["id"]]["meta"]["source"] == "feedback"
    calibrator = [json.loads(x) for x in (out / "calibrator.jsonl").read_text().splitlines()]
    wrong = [c for c in calibrator if c["id"] == rows[0]["id"] and c["meta"]["why"] == "feedback"]
    assert wrong and all(c["answer"] == "No" and c["meta"]["tag"] == rows[0]["tags"][0] for c in wrong)


def test_the_active_adapters_file_is_replaced_atomically_and_followed(tmp_path):
    from llm4tag.finetune.registry import ActiveAdapters, read_active, write_active

    path = tmp_path / "reg" / "active.json"
    follower = ActiveAdapters(path)
    assert follower.changed() is None and read_active(path) == {"generator": None, "calibrator": None}
    write_active(path, {"generator": str(tmp_path / "g1")}, by="test")
    seen = follower.changed()
    assert seen["generator"] == str(tmp_path / "g1") and seen["calibrator"] is None and seen["by"] == "test"
    assert follower.changed() is None  # unchanged file: nothing to do
    write_active(path, {"calibrator": str(tmp_path / "c1")}, by="test")
    seen = follower.changed()
    assert seen["generator"] == str(tmp_path / "g1") and seen["calibrator"] == str(tmp_path / "c1")
    assert [p.name for p in path.parent.iterdir()] == ["active.json"]  # no temporary file left
    with pytest.raises(LLM4TagError, match="unknown adapter role"):
        write_active(path, {"judge": None}, by="test")


class _RunsCode:
    """A pickled object that runs code when loaded: what a replaced checkpoint could hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_loads_tensors_and_plain_values_only(tmp_path):
    import torch

    from llm4tag.finetune.train import load_trainer_state

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": 3,
        "losses": [2.5, 2.25],
        "loss_before": 2.75,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "cuda_rng": None,
    }
    torch.save(state, tmp_path / "trainer.pt")
    loaded = load_trainer_state(tmp_path / "trainer.pt")
    assert loaded["python_rng"] == state["python_rng"] and loaded["losses"] == [2.5, 2.25]
    assert torch.equal(loaded["torch_rng"], state["torch_rng"])
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])

    marker = tmp_path / "code-ran"
    torch.save({**state, "extra": _RunsCode(marker)}, tmp_path / "replaced.pt")
    with pytest.raises(LLM4TagError, match="other than tensors"):
        load_trainer_state(tmp_path / "replaced.pt")
    assert not marker.exists()
