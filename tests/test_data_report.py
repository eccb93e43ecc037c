"""`jobs/data.py inspect` and `dedupe`: class counts, exact duplicates within and across splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fer_dist import config as C
from fer_dist import data, data_report
from fer_dist.data import Split
from fer_dist.errors import UserError
from tests import jobs_helpers
from tests.test_data import REAL_FILE
from tests.test_datasets import write_folder
from tests.tiny import write_tiny_csv


def faces(*values: int) -> np.ndarray:
    """One 48x48 face per value, filled with it: equal values, identical faces."""
    return np.stack([np.full((48, 48), v, np.uint8) for v in values])


def test_duplicates_within_and_across_splits_and_conflicting_labels():
    splits = {
        # 1 twice in train (same label), 2 in train and val (different labels), 3 in train and test
        "train": Split(faces(1, 1, 2, 3, 4), np.array([0, 0, 1, 2, 3])),
        "val": Split(faces(2, 5, 6, 6), np.array([0, 1, 2, 3])),  # 6 twice in val, labels differ
        "test": Split(faces(3, 7), np.array([2, 4])),
    }
    d = data_report.find_duplicates(splits)
    assert d.groups == 4 and d.surplus_rows == 4
    assert d.within == {"train": 1, "val": 1}
    assert d.across == {"train+val": 1, "train+test": 1}
    assert d.rows_also_in_train == {"val": 1, "test": 1}
    assert d.train_rows_also_in_eval == 2
    assert d.conflicting_labels == 2
    assert {m["split"] for group in d.examples for m in group} == {"train", "val"}


def test_dedupe_eval_drops_training_faces_an_evaluation_split_holds(tmp_path):
    lines = ["emotion,pixels,Usage"]
    for label, value, usage in [(0, 1, "Training"), (1, 2, "Training"), (1, 2, "Training"), (2, 3, "Training")]:
        lines.append(f"{label},{' '.join([str(value)] * 2304)},{usage}")
    for label, value, usage in [(1, 2, "PublicTest"), (0, 9, "PublicTest"), (2, 3, "PrivateTest")]:
        lines.append(f"{label},{' '.join([str(value)] * 2304)},{usage}")
    csv = tmp_path / "f.csv"
    csv.write_text("\n".join(lines) + "\n")
    kept = data.load(str(csv))
    assert len(kept.train) == 4
    deduped = data.load(str(csv), dedupe="eval")
    assert deduped.train.images[:, 0, 0].tolist() == [1]  # the two 2s (in val) and the 3 (in test) go
    assert deduped.notes[-1] == (
        "dedupe=eval: dropped 3 of 4 training faces identical to an evaluation face (2 also in val, 1 also in test)"
    )
    assert len(deduped.val) == 2 and len(deduped.test) == 1  # evaluation splits are never touched
    with pytest.raises(UserError, match="dedupe='all': expected one of none, eval"):
        C.resolve("smoke", {"dedupe": "all"})


def test_inspect_prints_the_classes_and_writes_its_pictures(tmp_path):
    folder = write_folder(tmp_path / "three", {"train": 4, "val": 2})
    out = tmp_path / "report"
    done = jobs_helpers.run("data.py", "inspect", folder, "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"{folder}: 3 classes, train 12, val 6"
    assert [line.split()[0] for line in lines[2:5]] == ["tense", "calm", "joy"]
    assert "duplicates (identical pixels): 0 groups" in done.stdout
    assert "source images: 18 files; of 18 read: width 48-48 (median 48), height 48-48 (median 48); modes L 18" in (
        done.stdout
    )
    report = json.loads((out / "report.json").read_text())
    assert report["class_names"] == ["tense", "calm", "joy"] and report["splits"]["val"]["counts"]["joy"] == 2
    for name in ("samples.png", "class_balance.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    again = jobs_helpers.run("data.py", "inspect", folder, "--output", str(out))
    jobs_helpers.assert_user_error(again, f"--output {out} already holds a report")
    as_json = jobs_helpers.run("data.py", "inspect", folder, "--format", "json")
    assert json.loads(as_json.stdout)["duplicates"]["groups"] == 0


def test_inspect_of_bad_data_is_one_error_line(tmp_path):
    csv = write_tiny_csv(tmp_path / "tiny.csv", n_train=7, n_val=7)
    Path(csv).write_text(Path(csv).read_text() + "9,1 2 3,Training\n")
    jobs_helpers.assert_user_error(jobs_helpers.run("data.py", "inspect", csv), "tiny.csv line 16", "emotion 9")
    jobs_helpers.assert_user_error(jobs_helpers.run("data.py", "inspect", str(tmp_path / "no")), "no such file")


@pytest.mark.fer2013
@pytest.mark.skipif(not REAL_FILE.exists(), reason=f"{REAL_FILE} is absent")
def test_inspect_finds_fer2013s_duplicates():
    report, _ = data_report.inspect(str(REAL_FILE))
    d = report.duplicates
    assert (d.groups, d.surplus_rows, d.conflicting_labels) == (1273, 1532, 47)
    assert d.across == {"train+val": 270} and d.rows_also_in_train == {"val": 280}
    assert d.train_rows_also_in_eval == 351


def test_conflicting_groups_of_a_csv_name_their_lines(tmp_path):
    lines = ["emotion,pixels,Usage"]
    for label, value, usage in [(0, 1, "Training"), (3, 5, "Training"), (4, 5, "PublicTest")]:
        lines.append(f"{label},{' '.join([str(value)] * 2304)},{usage}")
    csv = tmp_path / "f.csv"
    csv.write_text("\n".join(lines) + "\n")
    report, _ = data_report.inspect(str(csv))
    assert report.duplicates.examples == [
        [{"split": "train", "index": 1, "label": 3, "line": 3}, {"split": "val", "index": 0, "label": 4, "line": 4}]
    ]


def test_a_manifests_source_images_are_surveyed(tmp_path):
    from PIL import Image

    rows = []
    for i, (size, mode) in enumerate([((64, 80), "RGB"), ((100, 100), "L"), ((30, 40), "RGB")]):
        Image.new(mode, size).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]},train")
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    assert data.image_files(str(tmp_path / "m.csv")) == [str(tmp_path / f"{i}.png") for i in range(3)]
    survey = data_report.survey_files(data.image_files(str(tmp_path / "m.csv")))
    assert survey["width"] == {"min": 30, "median": 64.0, "max": 100} and survey["modes"] == {"RGB": 2, "L": 1}
    assert data.image_files(write_tiny_csv(tmp_path / "fer.csv", n_train=7, n_val=7)) == []
