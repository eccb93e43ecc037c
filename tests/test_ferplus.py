"""FER+ votes beside a FER-2013 CSV: the majority protocol, vote distributions as training
targets, and files that do not line up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fer_dist import data, ferplus
from fer_dist.errors import UserError
from tests import jobs_helpers
from tests.tiny import tiny_split, write_tiny_csv

HEADER = "Usage,Image name," + ",".join(ferplus.VOTE_COLUMNS)


def votes_row(counts: list[int]) -> np.ndarray:
    return np.array(counts, np.int64)


def test_the_majority_protocol():
    rows = np.stack(
        [
            votes_row([8, 2, 0, 0, 0, 0, 0, 0, 0, 0]),  # neutral
            votes_row([0, 5, 4, 1, 0, 0, 0, 0, 0, 0]),  # happiness: 5 of 9 once the single vote goes
            votes_row([0, 5, 5, 0, 0, 0, 0, 0, 0, 0]),  # a tie: no majority, dropped
            votes_row([2, 0, 0, 0, 0, 0, 0, 0, 8, 0]),  # unknown: dropped
            votes_row([0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # not a face: dropped
            votes_row([0, 0, 0, 0, 0, 0, 0, 7, 0, 3]),  # contempt
        ]
    )
    keep, labels, targets = ferplus.relabel(rows, "majority", contempt=True, train=True)
    assert keep.tolist() == [True, True, False, False, False, True] and targets is None
    assert labels[keep].tolist() == [0, 1, 7]
    keep, labels, _ = ferplus.relabel(rows, "majority", contempt=False, train=True)
    assert keep.tolist() == [True, True, False, False, False, False]  # contempt is no class now
    keep, labels, targets = ferplus.relabel(rows, "probability", contempt=True, train=True)
    assert keep.tolist() == [True, True, True, False, False, True]
    assert targets[1].tolist() == pytest.approx([0, 5 / 9, 4 / 9, 0, 0, 0, 0, 0])  # the single vote is gone
    assert targets[2].tolist() == pytest.approx([0, 0.5, 0.5, 0, 0, 0, 0, 0])
    keep, _, targets = ferplus.relabel(rows, "probability", contempt=True, train=False)
    assert targets is None and keep.tolist() == [True, True, False, False, False, True]  # evaluation: majority


def write_votes(path, csv_path: str, unknown_every: int = 5) -> str:
    """A votes file for a tiny FER-2013 CSV: 8 votes for the FER+ class of the row's band, 2 for
    the next class; every `unknown_every`-th row's majority is `unknown` instead."""
    lines = [HEADER]
    fer_rows = open(csv_path).read().splitlines()[1:]
    for i, row in enumerate(fer_rows):
        label, _, usage = row.split(",")
        counts = [0] * 10
        if i % unknown_every == unknown_every - 1:
            counts[8] = 10
        else:
            counts[int(label)] += 8
            counts[(int(label) + 1) % 8] += 2
        lines.append(f"{usage},fer{i:07d}.png," + ",".join(map(str, counts)))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_votes_relabel_a_fer2013_csv_in_both_modes(tmp_path):
    csv = write_tiny_csv(tmp_path / "fer.csv", n_train=50, n_val=20)
    votes = write_votes(tmp_path / "fer2013new.csv", csv)
    ds = data.load(csv, votes=data.VoteLabels(votes))
    assert ds.class_names == ferplus.CLASSES
    assert (len(ds.train), len(ds.val)) == (40, 16)  # every 5th row was `unknown`
    assert ds.train.labels.tolist() == tiny_split(50, 1).labels[np.arange(50) % 5 != 4].tolist()
    assert ds.train.targets is None and "label_mode=majority, 8 classes" in ds.notes[0]
    soft = data.load(csv, votes=data.VoteLabels(votes, "probability"))
    assert soft.train.targets.shape == (40, 8) and soft.val.targets is None
    assert np.allclose(soft.train.targets.sum(axis=1), 1.0)
    assert (soft.train.targets.argmax(axis=1) == soft.train.labels).all()
    seven = data.load(csv, votes=data.VoteLabels(votes, contempt=False))
    assert seven.class_names == ferplus.CLASSES[:7]


def test_votes_that_do_not_line_up_are_refused(tmp_path):
    csv = write_tiny_csv(tmp_path / "fer.csv", n_train=14, n_val=7)
    votes = tmp_path / "fer2013new.csv"
    write_votes(votes, csv)
    lines = votes.read_text().splitlines()
    (tmp_path / "short.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(UserError) as info:
        data.load(csv, votes=data.VoteLabels(str(tmp_path / "short.csv")))
    assert str(info.value).startswith(f"{tmp_path / 'short.csv'} has 20 data rows, {csv} has 21")
    lines[4], lines[17] = lines[17], lines[4]  # a PublicTest row among the Training rows
    votes.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as info:
        data.load(csv, votes=data.VoteLabels(str(votes)))
    assert str(info.value) == (
        f"{votes} line 5: Usage PublicTest but {csv} line 5 is Training: the files' rows are not in the same order"
    )
    lines[4] = lines[4].replace(",8,", ",eight,", 1)
    votes.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"line 5: vote count 'eight' is not a whole number"):
        data.load(csv, votes=data.VoteLabels(str(votes)))
    folder = tmp_path / "images"
    folder.mkdir()
    for other in (str(folder), "builtin"):
        with pytest.raises(UserError, match="FER\\+ votes label a FER-2013 CSV"):
            data.load(other, votes=data.VoteLabels(str(votes)))


def test_probability_mode_trains_on_vote_distributions(tmp_path):
    from fer_dist import config as C
    from fer_dist import train
    from fer_dist.sessions import LocalSession

    csv = write_tiny_csv(tmp_path / "fer.csv", n_train=224, n_val=70)
    votes = write_votes(tmp_path / "fer2013new.csv", csv)
    sets = {"data": csv, "labels": votes, "label_mode": "probability", "epochs": "3", "learning_rate": "0.003"}
    config = C.resolve("smoke", dict(sets, precise_bn="160"))
    result = train.fit(config, LocalSession(str(tmp_path / "run"), show_progress=False))
    history = result.state.history
    assert result.config.class_names == ferplus.CLASSES and result.model.output_shape[-1] == 8
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_accuracy"] > 0.6, history  # majority labels, 8 classes (1/8 by chance)


@pytest.mark.slow  # trains in a subprocess
def test_train_job_with_labels_reports_majority_evaluation(tmp_path):
    csv = write_tiny_csv(tmp_path / "fer.csv", n_train=112, n_val=35, n_test=35)
    votes = write_votes(tmp_path / "fer2013new.csv", csv)
    args = ["--data", csv, "--labels", votes, "--preset", "smoke", "--output", str(tmp_path / "runs"), "--name", "p"]
    done = jobs_helpers.run("train.py", *args, "--epochs", "1", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "p" / "metrics.json").read_text())
    assert metrics["class_names"] == list(ferplus.CLASSES)
    assert list(metrics["test"]["per_class"]) == list(ferplus.CLASSES) and metrics["test"]["n"] == 28
    assert "FER+ votes" in done.stderr and "label_mode=majority" in done.stderr
    evaluated = jobs_helpers.run("evaluate.py", str(tmp_path / "runs" / "p"), "--split", "test")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "happiness" in evaluated.stdout and "n 28" in evaluated.stdout
