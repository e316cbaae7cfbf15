"""Progress of long work (llm4tag/progress.py): log lines per step, nested names, no bar off a terminal."""

from __future__ import annotations

import logging

import pytest

from llm4tag import progress
from llm4tag.progress import step


def test_a_step_logs_its_start_and_its_end_with_the_rate(caplog):
    caplog.set_level(logging.INFO, logger="llm4tag.progress")
    with step("encode items", total=30) as bar:
        bar.update(10)
        with step("batch"):
            pass
        bar.update(20)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "encode items: started (30 items)"
    assert lines[1] == "encode items / batch: started"
    assert lines[2].startswith("encode items / batch: done, ") and " in " not in lines[2]
    assert lines[3].startswith("encode items: done, 30 items in ") and "items/s" in lines[3]


def test_a_failed_step_still_says_it_ended(caplog):
    caplog.set_level(logging.INFO, logger="llm4tag.progress")
    with pytest.raises(RuntimeError), step("fit folds", total=5, unit="fold") as bar:
        bar.update(2)
        raise RuntimeError("boom")
    assert caplog.records[-1].getMessage().startswith("fit folds: done, 2 folds in ")
    with step("next"):
        pass
    assert caplog.records[-1].getMessage().startswith("next: done")  # not "fit folds / next"


def test_no_bar_is_drawn_when_stderr_is_not_a_terminal(capsys):
    with step("quiet", total=3) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_off_a_terminal_a_long_step_logs_where_it_is(caplog, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="llm4tag.progress")
    with step("bulk tag", total=100, initial=40) as bar:
        bar.set_postfix_str("3 files")
        bar.update(20)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "bulk tag: started (100 items), 40 done before"
    assert lines[1].startswith("bulk tag: 60/100 items, ") and " left, 3 files" in lines[1]
    # The rate counts this run's items only, not those a resumed step found done.
    assert lines[2].startswith("bulk tag: done, 20 items in ")


def test_a_step_without_a_total_logs_its_count(caplog, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="llm4tag.progress")
    with step("download", unit="package", bar=False) as bar:
        bar.update(2)
    assert caplog.records[1].getMessage().startswith("download: 2 packages, ")
    assert " left" not in caplog.records[1].getMessage()
