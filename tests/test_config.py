"""The one config mechanism: sections refuse unknown keys and bad values with an error naming the
setting, copies with overrides are validated, and docs/configuration.md is what the field descriptions
say (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from graph_store import StoreError
from graph_store.config import ConfigModel, GraphConfig
from llm4tag.config import Settings, load_settings, settings_from_dict
from llm4tag.config_reference import render
from llm4tag.errors import ConfigError
from llm4tag.service.settings import ServiceConfig

REPO = Path(__file__).resolve().parents[1]


def _sections(model: type[ConfigModel]):
    yield model
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, ConfigModel):
            yield from _sections(field.annotation)


def test_the_reference_is_generated_from_the_field_descriptions():
    assert (REPO / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is out of date: python -m llm4tag.config_reference > docs/configuration.md"
    )
    for section in [*_sections(Settings), *_sections(ServiceConfig)]:
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no description"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pipeline": {"threshold": 1.5}}, r"pipeline\.threshold"),
        ({"pipelin": {}}, r"config has unknown section\(s\): pipelin"),
        ({"llm": {"modle": "tiny"}}, r"config section 'llm' has unknown setting\(s\): modle"),
        ({"graph": {"recall": {"delta_cc": 2}}}, r"graph\.recall\.delta_cc"),
        ({"bulk": {"generate": {"actors": 2, "max_actors": 1}}}, r"bulk\.generate: max_actors"),
        ({"pipeline": 3}, r"pipeline: must be a mapping"),
        ({"finetune": {"cpu": {"batch_size": 0}}}, r"finetune\.cpu\.batch_size"),
    ],
)
def test_a_bad_setting_is_one_error_naming_it(data, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(data)


def test_overrides_give_a_validated_copy_and_keep_the_nested_defaults():
    base = settings_from_dict({"finetune": {"cpu": {"max_steps": 3}}, "bulk": {"recall": {"actors": 2}}})
    assert base.finetune.cpu.batch_size == 2 and base.bulk.recall.batch_size == 256  # machine/stage defaults
    tiny = base.with_overrides({"llm": {"model": "tiny"}, "pipeline": {"threshold": 0.7}})
    assert (tiny.llm.model, tiny.pipeline.threshold, tiny.finetune.cpu.max_steps) == ("tiny", 0.7, 3)
    assert (base.llm.model, base.pipeline.threshold) == ("default", 0.5)  # the original is unchanged
    with pytest.raises(ConfigError, match=r"llm\.batch_size"):
        base.with_overrides({"llm": {"batch_size": 0}})


def test_overrides_keep_which_settings_were_given():
    # An unset pipeline.threshold means the store's fitted cut; a copy must not make it explicit.
    base = settings_from_dict({"pipeline": {"max_tags": 3}})
    copy = base.with_overrides({"llm": {"model": "tiny"}})
    assert "threshold" not in copy.pipeline.model_fields_set
    assert "max_tags" in copy.pipeline.model_fields_set
    assert "threshold" in copy.with_overrides({"pipeline": {"threshold": 0.5}}).pipeline.model_fields_set


def test_the_graph_section_is_the_store_s_and_round_trips_through_a_manifest():
    config = GraphConfig.load({"recall": {"num_candidates": 10}, "content_index": {"kind": "flat"}})
    assert GraphConfig.load(config.model_dump()) == config
    with pytest.raises(StoreError, match=r"graph\.recall\.num_candidates"):
        GraphConfig.load({"recall": {"num_candidates": 0}})


def test_config_files_in_the_repository_load(tmp_path):
    for path in (REPO / "configs").glob("*.yaml"):
        assert isinstance(load_settings(path), Settings), path
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_the_encoder_s_auto_threads_follow_omp_num_threads_else_the_cpus_it_may_use(monkeypatch):
    import os

    from llm4tag.encoder import encode_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as Ray sets it in its workers
    assert encode_threads("auto") == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert encode_threads("auto") == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert encode_threads("auto") == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # set but empty: not a number, so the CPUs
    assert encode_threads("auto") == len(os.sched_getaffinity(0))
    assert encode_threads(2) == 2 and encode_threads(None) is None
    assert Settings().encoder.threads == "auto"
    assert settings_from_dict({"encoder": {"threads": 1}}).encoder.threads == 1
    with pytest.raises(ConfigError, match=r"encoder\.threads"):
        settings_from_dict({"encoder": {"threads": 0}})


def test_a_bulk_job_on_its_own_local_cluster_gives_its_route_actors_the_cores():
    import os

    from cluster.bulk import route_stage_settings

    cores = len(os.sched_getaffinity(0))
    assert route_stage_settings(Settings(), "local").encoder.threads == cores
    two = settings_from_dict({"bulk": {"recall": {"actors": 2}}})
    assert route_stage_settings(two, "local").encoder.threads == max(1, cores // 2)
    assert route_stage_settings(Settings(), "ray://head:10001").encoder.threads == "auto"  # joined
    assert route_stage_settings(Settings(), "current").encoder.threads == "auto"  # a Ray already up
    one = settings_from_dict({"encoder": {"threads": 1}})
    assert route_stage_settings(one, "local").encoder.threads == 1  # said explicitly: kept
