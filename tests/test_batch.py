"""`jobs/predict.py DIR --run RUN --workers N --output OUT` (fer_dist/batch.py): Ray Data over
4,000 files, a worker lost mid-run, a stopped job resumed without redoing finished shards."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
import pytest
from PIL import Image

from fer_dist import EMOTIONS
from tests import jobs_helpers
from tests.saved_run import save_untrained_run

run, assert_user_error = jobs_helpers.run, jobs_helpers.assert_user_error
FILES, SHARD = 4_000, 160  # 25 shards: a worker killed after 2 leaves most to do


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return save_untrained_run(tmp_path_factory.mktemp("runs") / "r")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    """FILES - 1 face-sized PNGs and one damaged file (the last)."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(FILES - 1):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8), "L").save(d / f"img_{i:05d}.png")
    (d / f"img_{FILES - 1:05d}.png").write_bytes(b"\x89PNG damaged")
    return str(d)


def start(images: str, run_dir: str, output: str) -> subprocess.Popen:
    """The batch job in its own session (its private Ray cluster with it), stderr into stdout."""
    args = [images, "--run", run_dir, "--workers", "2", "--output", output, "--shard-files", str(SHARD)]
    return subprocess.Popen(
        [sys.executable, os.path.join(jobs_helpers.ROOT, "jobs", "predict.py"), *args],
        cwd=jobs_helpers.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,
    )


def parts(output: str) -> list[str]:
    return sorted(n for n in os.listdir(output) if n.startswith("part-")) if os.path.isdir(output) else []


def wait_for_parts(output: str, proc, n: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while len(parts(output)) < n:
        assert proc.poll() is None, jobs_helpers.finish(proc)[-4000:]
        assert time.time() < deadline, f"fewer than {n} parts after {timeout} s"
        time.sleep(0.2)


def scorers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The Ray Data workers (actors) of this job's private cluster (in the job's session)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "MapWorker" in " ".join(p.info["cmdline"] or []) and os.getsid(p.pid) == proc.pid:
                found.append(p)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def check_output(output: str) -> pd.DataFrame:
    frame = pd.read_parquet(output)
    assert len(frame) == FILES and frame["image"].is_unique, (len(frame), frame["image"].duplicated().sum())
    ok = frame[frame["face"].notna()]
    assert len(ok) == FILES - 1
    np.testing.assert_allclose(ok[list(EMOTIONS)].sum(axis=1), 1.0, atol=1e-9)
    (bad,) = frame[frame["face"].isna()].itertuples()
    assert bad.image.endswith(f"img_{FILES - 1:05d}.png") and bad.note.startswith("unreadable: not a readable image"), (
        bad
    )
    assert len(parts(output)) == FILES // SHARD
    assert json.load(open(os.path.join(output, "_batch.json")))["complete"] is True
    return frame


@pytest.mark.ray
def test_batch_survives_a_lost_worker_and_resumes_without_redoing_finished_shards(images, run_dir, tmp_path):
    # (a) a worker SIGKILLed mid-run: Ray Data restarts it and its shard is scored again; every file once
    output = str(tmp_path / "out")
    proc = start(images, run_dir, output)
    wait_for_parts(output, proc, 2)
    victims = scorers(proc)
    assert victims, "no ShardScorer process found"
    victims[0].kill()
    killed_with = len(parts(output))
    out = jobs_helpers.finish(proc, timeout=400)
    assert proc.returncode == 0, out[-5000:]
    assert killed_with < FILES // SHARD, "the job ended before the worker was killed: nothing was tested"
    check_output(output)
    assert "images/s" in out and f"{FILES} files in {FILES // SHARD} shards" in out, out[-3000:]

    # (b) the driver killed mid-run; the same command again scores only the missing shards
    second = str(tmp_path / "second")
    proc = start(images, run_dir, second)
    wait_for_parts(second, proc, 3)
    workers = scorers(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    jobs_helpers.finish(proc, timeout=60)
    for p in workers:  # the workers notice the cluster gone; one may finish the part it is writing
        p.kill()
    psutil.wait_procs(workers, timeout=60)
    before = {n: os.stat(os.path.join(second, n)).st_mtime_ns for n in parts(second)}
    proc = start(images, run_dir, second)
    out = jobs_helpers.finish(proc, timeout=400)
    assert proc.returncode == 0, out[-5000:]
    assert f"{len(before)} of {FILES // SHARD} shards done already" in out, out[-3000:]
    assert all(os.stat(os.path.join(second, n)).st_mtime_ns == t for n, t in before.items())  # not redone
    pd.testing.assert_frame_equal(
        check_output(second).sort_values("image").reset_index(drop=True),
        check_output(output).sort_values("image").reset_index(drop=True),
    )

    # (c) done: the same command again starts nothing; another job's output is refused
    again = run(
        "predict.py", images, "--run", run_dir, "--workers", "2", "--output", second, "--shard-files", str(SHARD)
    )
    assert again.returncode == 0 and f"{FILES // SHARD} of {FILES // SHARD} shards done already" in again.stderr
    assert "Ray:" not in again.stderr
    other = run("predict.py", images, "--run", run_dir, "--workers", "2", "--output", second, "--faces", "whole")
    assert_user_error(other, f"--output {second}: holds the predictions of another job", "faces")
    lone = run("predict.py", images, "--run", run_dir, "--output", second)
    assert_user_error(lone, "--workers and --output go together")


@pytest.mark.ray
def test_batch_reads_and_writes_gs_through_the_emulator_and_finds_faces_in_photos(run_dir, gcs_prefix):
    """Images in a bucket, Parquet parts to a bucket: the workers reach storage as the driver does.
    Among the face crops, photos: MTCNN runs inside the Ray Data workers, one row per face found
    (each box against its pasted square), and a photo without a face gets its row saying so."""
    from fer_dist import faces, storage, synthetic

    def put(name: str, image: Image.Image, fmt: str) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        storage.write_bytes(storage.join(source, name), buffer.getvalue())

    rng = np.random.default_rng(1)
    source = storage.join(gcs_prefix, "images")
    for i in range(60):
        put(f"face_{i:03d}.png", Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8), "L"), "PNG")
    face = synthetic.sample_face()
    squares = {}
    for name, pasted, seed in (
        ("photo_a.jpg", [face, face[:, ::-1], face], 3),
        ("photo_b.jpg", [face[:, ::-1], face], 4),
    ):
        picture, squares[name] = synthetic.photo_with_faces(pasted, sides=(110, 160), seed=seed)
        put(name, picture, "JPEG")
    put("photo_c.jpg", synthetic.textured_background(640, 480, np.random.default_rng(5)), "JPEG")
    output = storage.join(gcs_prefix, "emotions")
    proc = run("predict.py", source, "--run", run_dir, "--workers", "1", "--output", output, "--shard-files", "25")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(storage.listdir(output)) == ["_batch.json", *(f"part-{i:05d}.parquet" for i in range(3))]
    frames = [
        pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(output, f"part-{i:05d}.parquet")))) for i in range(3)
    ]
    frame = pd.concat(frames, ignore_index=True)
    crops = frame[frame["image"].str.contains("/face_")]
    assert list(crops["image"]) == [storage.join(source, f"face_{i:03d}.png") for i in range(60)]
    np.testing.assert_allclose(crops[list(EMOTIONS)].sum(axis=1), 1.0, atol=1e-9)
    for name, placed in squares.items():
        rows = frame[frame["image"].str.endswith(name)]
        assert len(rows) == len(placed) and (rows["score"] >= faces.MIN_SCORE).all(), rows
        boxes = [tuple(int(v) for v in r) for r in rows[["x", "y", "width", "height"]].itertuples(index=False)]
        for square in placed:
            assert max(faces.iou(box, square) for box in boxes) > 0.5, (square, boxes)
    (empty,) = frame[frame["image"].str.endswith("photo_c.jpg")].itertuples()
    assert empty.note == "no face found" and pd.isna(empty.face), empty


def test_parts_share_one_schema_whatever_rows_they_hold(run_dir, tmp_path):
    """A shard of damaged files only and a shard of crops read whole (no detector score): both
    parts read back together, with the columns' types of the docs."""
    from fer_dist import batch, inference, predict

    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    Image.fromarray(np.zeros((48, 48), np.uint8), "L").save(good / "a.png")
    (bad / "b.png").write_bytes(b"not a png")
    predictor, options = inference.Predictor.load(run_dir), predict.Options()
    out = tmp_path / "out"
    out.mkdir()
    classes = predictor.config.classes
    bad_part = batch.score_shard([str(bad / "b.png")], predictor, None, options)
    batch.write_part(str(out / "part-00000.parquet"), bad_part, classes)
    good_part = batch.score_shard([str(good / "a.png")], predictor, None, options)
    batch.write_part(str(out / "part-00001.parquet"), good_part, classes)
    frame = pd.read_parquet(out)
    assert list(frame["note"]) == ["unreadable: not a readable image (unknown format or corrupt data)", ""]
    assert list(frame["emotion"].iloc[:1]) == [""] and frame["emotion"].iloc[1] in EMOTIONS
    assert str(frame["face"].dtype) == "Int64" and frame["face"].iloc[1] == 0 and pd.isna(frame["face"].iloc[0])


def test_batch_inputs_that_cannot_work_are_refused_before_ray(run_dir, tmp_path):
    from fer_dist import batch, predict
    from fer_dist.errors import UserError

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"x")
    with pytest.raises(UserError, match="no images .the batch path reads images"):
        batch.plan(str(videos), run_dir, predict.Options(), str(tmp_path / "out"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="a file, not a directory"):
        batch.plan(str(videos), run_dir, predict.Options(), str(tmp_path / "file.txt"))
    with pytest.raises(UserError, match="--annotate and --plot are for the single-process path"):
        batch.run(str(videos), run_dir, predict.Options(annotate=str(tmp_path / "a")), str(tmp_path / "o"), 1)


@pytest.mark.ray
def test_a_damaged_model_met_by_the_workers_is_one_error_line(run_dir, images, tmp_path):
    import shutil

    damaged = tmp_path / "run"
    shutil.copytree(run_dir, damaged)
    model = damaged / "model.keras"
    model.write_bytes(model.read_bytes()[:1000])
    proc = run("predict.py", images, "--run", str(damaged), "--workers", "1", "--output", str(tmp_path / "o"))
    assert_user_error(proc, "model.keras: not a readable Keras model")
