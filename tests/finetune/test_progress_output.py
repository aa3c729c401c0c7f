"""What a person sees while the student trains: a progress bar (or, under `distill run`, plain
log lines), never the trainer's raw log dictionaries printed to standard output."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("trl")

from finetune.config import FinetuneConfig  # noqa: E402
from finetune.train import train_student  # noqa: E402
from pipeline.progress import stage_done_line, stage_started_line  # noqa: E402


@pytest.mark.parametrize("progress", [True, False], ids=["bar", "plain"])
def test_training_prints_no_log_dictionaries(tmp_path, student_dir, short_records, capfd, caplog, progress):
    settings = FinetuneConfig(max_length=128, batch_size=4, max_steps=1, learning_rate=1e-3, seed=0)
    with caplog.at_level(logging.INFO, logger="finetune.train"):
        train_student(short_records, student_dir, tmp_path / "out", settings, progress=progress)
    out, err = capfd.readouterr()
    assert "{'loss'" not in out + err and "'train_runtime'" not in out + err
    assert out.strip() == ""  # nothing at all on standard output
    assert "step 1/1 loss" in caplog.text  # the loss goes to the log, one line per logged step
    if progress:
        assert "1/1" in err  # the bar, on standard error
    else:
        assert "it/s]" not in err and "Loading weights" not in err and "examples/s]" not in err


def test_one_line_when_a_stage_starts_and_when_it_is_done():
    assert stage_started_line(2, 5, "filter", "rate and keep the best pairs") == "[2/5] filter: rate and keep the best pairs"
    assert stage_done_line(3, 5, "finetune", {"seconds": 128.36, "train_records": 14, "steps": 3,
                                              "train_loss": 2.2366}) == \
        "[3/5] finetune: done in 128.4 s; trained on 14 records, 3 steps, loss 2.24"
    assert stage_done_line(2, 5, "filter", {"seconds": 13.6, "input": 20, "kept": 16, "rated": 20,
                                            "selection": "top_k"}) == \
        "[2/5] filter: done in 13.6 s; 16 of 20 records kept (selection top_k), 20 rated by the judge"
    assert stage_done_line(1, 1, "lengths", {"seconds": 1.0, "records": 3}) == "[1/1] lengths: done in 1 s"
