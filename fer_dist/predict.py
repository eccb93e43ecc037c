"""Emotions of the faces in images and videos, from a trained run.

    python jobs/predict.py photo.jpg --run runs/NAME --annotate out/
    python jobs/predict.py faces/ --run runs/NAME --format json --tta flip
    python jobs/predict.py clip.mp4 --run runs/NAME --fps 2 --format csv --plot clip.png > clip.csv

`predict(path, run_dir, options)` reads one image or video file, or every image and video
directly in a directory (sorted by name; other files there are left alone): images of any
size, gray or colour (.jpg/.jpeg/.png), videos (.mp4/.avi/.mov/.mkv/.webm/.m4v) at
`options.fps` frames per second. Each goes through the one inference path
(`fer_dist.inference`): the faces (`faces.find_faces`, `--faces auto|detect|whole`), each
face's model input (`data.face_pixels`) and the run's probabilities (`inference.Predictor`).

It returns one row per face (`ROW_COLUMNS`, then one column per emotion; each row's
probabilities sum to 1); an image or frame without a face gets one row saying so, with empty
probabilities. `--annotate DIR` writes each image (and each sampled video frame, as
DIR/<video name>_frames/frame_<n>.jpg) with the boxes and top emotions drawn; `--plot FILE.png`
draws a video's emotions over time. Neither overwrites a file: one that exists is refused
before the model loads.

`render(frame, fmt)` gives a table, JSON, JSON lines or CSV. A missing path, an unreadable or
non-image file, or a directory without images or videos is a `UserError` naming the path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from fer_dist import storage
from fer_dist.errors import UserError

FORMATS = ("table", "json", "jsonl", "csv")
ROW_COLUMNS = ("image", "frame", "time_s", "face", "x", "y", "width", "height", "score", "note", "emotion")
ROW_COLUMNS += ("probability", "top")
PROGRESS_EVERY_S = 10.0
BATCH_FACES, BATCH_SOURCES = 256, 64  # faces scored per model call; images or frames held for it

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    tta: str | None = None  # None: the run's eval_tta
    faces: str = "auto"  # faces.FACE_MODES
    top_k: int = 1
    fps: float = 2.0
    annotate: str | None = None  # a directory
    plot: str | None = None  # a .png file, for videos


def input_paths(path: str) -> list[str]:
    """[path] for a file, the image and video files directly in a directory (sorted); UserError otherwise."""
    from fer_dist.data import IMAGE_SUFFIXES
    from fer_dist.video import VIDEO_SUFFIXES

    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    if not path or not storage.exists(path):
        raise UserError(f"{path}: no such file or directory")
    if not storage.is_dir(path):
        return [path]
    names = [n for n in storage.listdir(path) if not n.startswith(".") and n.lower().endswith(suffixes)]
    files = [storage.join(path, n) for n in names if not storage.is_dir(storage.join(path, n))]
    if not files:
        raise UserError(f"{path}: no images or videos in this directory (expected {', '.join(suffixes)} files)")
    return files


def image_paths(path: str) -> list[str]:
    """The images of `input_paths` (videos left out)."""
    from fer_dist.video import is_video

    return [p for p in input_paths(path) if not is_video(p)]


def open_photo(path: str) -> Image.Image | str:
    """The image with its EXIF orientation applied (as photo viewers show it), or what is wrong with the file."""
    from PIL import ImageOps

    from fer_dist.data import open_image

    image = open_image(path)
    return image if isinstance(image, str) else ImageOps.exif_transpose(image)


def open_images(paths: list[str]) -> dict[str, Image.Image]:
    """Each image of `paths` (`open_photo`; videos left out); UserError naming the first bad file."""
    from fer_dist.video import is_video

    opened = {}
    for path in paths:
        if is_video(path):
            continue
        image = open_photo(path)
        if isinstance(image, str):
            raise UserError(f"{path}: {image}")
        opened[path] = image
    return opened


def read_faces(paths: list[str], channels: str = "gray") -> np.ndarray:
    """uint8 faces [N, 48, 48] (gray) or [N, 48, 48, 3] (rgb), each image read whole; UserError
    naming the first bad file."""
    from fer_dist.data import face_pixels

    return np.stack([face_pixels(image, channels=channels) for image in open_images(paths).values()])


def check_options(options: Options) -> None:
    from fer_dist import faces, inference

    if options.tta is not None:
        inference.check_tta(options.tta)
    if options.faces not in faces.FACE_MODES:
        raise UserError(f"--faces {options.faces!r}: expected one of {', '.join(faces.FACE_MODES)}")
    if options.top_k < 1:
        raise UserError(f"--top-k {options.top_k}: expected 1 or more")
    if options.fps <= 0:
        raise UserError(f"--fps {options.fps}: expected a rate above 0 frames per second")
    if options.plot and not options.plot.lower().endswith(".png"):
        raise UserError(f"--plot {options.plot}: expected a .png file")
    if options.plot and storage.exists(options.plot):
        raise UserError(f"--plot {options.plot}: the file exists (not overwritten; remove it or pick another)")


@dataclass
class Source:
    """One image, or one sampled frame of a video."""

    path: str
    image: Image.Image
    frame: int | None = None
    time_s: float | None = None


def _sources(paths: list[str], images: dict[str, Image.Image], fps: float):
    from fer_dist import video

    for path in paths:
        if video.is_video(path):
            with contextlib.closing(video.frames(path, fps)) as frames:  # its temporary copy goes at once
                for f in frames:
                    yield Source(path, Image.fromarray(f.rgb), f.index, f.time_s)
        else:
            yield Source(path, images[path])


def _rows_of(source: Source, found) -> list[dict]:
    base = {"image": source.path, "frame": source.frame, "time_s": source.time_s, "note": found.note}
    if not found.faces:
        return [dict(base, face=None)]
    return [
        dict(base, face=i, x=f.box[0], y=f.box[1], width=f.box[2], height=f.box[3], score=f.score)
        for i, f in enumerate(found.faces)
    ]


def predict(path: str, run_dir: str, options: Options | None = None, tta: str | None = None) -> pd.DataFrame:
    """One row per face (see the module docstring)."""
    from fer_dist import annotate, faces, inference, video

    options = options or Options(tta=tta)
    check_options(options)
    paths = input_paths(path)
    images = open_images(paths)  # before the model loads: bad input fails fast
    for p in paths:
        if video.is_video(p):
            video.check(p)
    writer = annotate.Writer(options.annotate, paths) if options.annotate else None  # refuses what exists
    if options.plot and not any(p not in images for p in paths):
        raise UserError(f"--plot {options.plot}: draws a video's emotions over time; {path} holds no video")
    predictor = inference.Predictor.load(run_dir, options.tta)
    check_classes(predictor.config.classes, options.top_k)
    detector = None if options.faces == "whole" else faces.Detector()
    frame = score(_sources(paths, images, options.fps), predictor, detector, options, writer, len(paths))
    frame.attrs.update(run=run_dir, tta=predictor.tta, faces=options.faces, top_k=options.top_k)
    if options.plot:
        annotate.plot_over_time(frame, options.plot)
    return frame


def score(sources, predictor, detector, options: Options, writer=None, files: int | None = None) -> pd.DataFrame:
    """The rows of these images or frames (`Source`s): their faces (`faces.find_faces`), each
    face's model input (`data.face_pixels`) and probabilities (`predictor`), scored in batches."""
    from fer_dist import faces
    from fer_dist.data import face_pixels

    chunks, batch, progress = [], _Batch(), _Progress(files)
    for source in sources:
        found = faces.find_faces(source.image, options.faces, detector, frame=source.frame is not None)
        crops = [face_pixels(source.image, f.box, predictor.config.input_channels) for f in found.faces]
        batch.add(source, _rows_of(source, found), crops)
        progress.tick(source)
        if batch.full():
            chunks.append(batch.score(predictor, options.top_k, writer))
            batch = _Batch()
    chunks.append(batch.score(predictor, options.top_k, writer))
    frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
    frame.attrs.update(top_k=options.top_k, class_names=tuple(predictor.config.classes))
    return frame


@dataclass
class _Batch:
    """Sources read but not yet scored: scored together (one model call), then annotated."""

    sources: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    crops: list = field(default_factory=list)

    def add(self, source: Source, rows: list[dict], crops: list[np.ndarray]) -> None:
        self.sources.append(source)
        self.rows += rows
        self.crops += crops

    def full(self) -> bool:
        return len(self.crops) >= BATCH_FACES or len(self.sources) >= BATCH_SOURCES

    def score(self, predictor, top_k: int, writer) -> pd.DataFrame:
        classes = predictor.config.classes
        probs = predictor.probs(np.stack(self.crops)) if self.crops else np.zeros((0, len(classes)))
        frame = _frame(self.rows, probs, top_k, classes)
        if writer:
            writer.write(self.sources, frame)
        return frame


class _Progress:
    """A log line every PROGRESS_EVERY_S seconds on long work: files done, frames, faces per second."""

    def __init__(self, files: int | None):
        self.files, self.started, self.last = files, time.monotonic(), time.monotonic()
        self.seen: set[str] = set()
        self.sources = 0

    def tick(self, source: Source) -> None:
        self.seen.add(source.path)
        self.sources += 1
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            rate = self.sources / (now - self.started)
            log.info(
                "predict: %d/%d files, %d images or frames read (%.1f/s)",
                len(self.seen),
                self.files,
                self.sources,
                rate,
            )


def check_classes(classes: tuple[str, ...], top_k: int = 1) -> None:
    """The run's class names can be columns of predict's output, and --top-k is at most their count."""
    if not 1 <= top_k <= len(classes):
        raise UserError(f"--top-k {top_k}: expected 1 to {len(classes)} (the run's classes)")
    taken = sorted(set(classes) & set(ROW_COLUMNS))
    if taken:
        raise UserError(f"the run's class {taken[0]!r} has the name of a column of predict's output")


def _frame(rows: list[dict], probs: np.ndarray, top_k: int, classes: tuple[str, ...]) -> pd.DataFrame:
    """The rows with the predicted class (column `emotion`), its probability, the top k, then one
    probability column per class (in class order)."""
    frame = pd.DataFrame(rows, columns=[c for c in ROW_COLUMNS if c not in ("emotion", "probability", "top")])
    with_face = frame["face"].notna().to_numpy()
    table = np.full((len(frame), len(classes)), np.nan)
    table[with_face] = probs
    order = np.argsort(-np.nan_to_num(table, nan=-1.0), axis=1, kind="stable")
    frame["emotion"] = [classes[o[0]] if ok else "" for o, ok in zip(order, with_face)]
    frame["probability"] = [row[o[0]] if ok else np.nan for row, o, ok in zip(table, order, with_face)]
    frame["top"] = [
        ", ".join(f"{classes[i]} {row[i]:.3f}" for i in o[:top_k]) if ok else ""
        for row, o, ok in zip(table, order, with_face)
    ]
    for i, name in enumerate(classes):
        frame[name] = table[:, i]
    for column in ("face", "frame", "x", "y", "width", "height"):
        frame[column] = frame[column].astype("Int64")
    frame.attrs.update(top_k=top_k, class_names=tuple(classes))
    return frame


def class_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """The class names of predict's rows: their probability columns, in class order."""
    return frame.attrs.get("class_names") or tuple(c for c in frame.columns if c not in ROW_COLUMNS)


def _visible(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns that say something for these rows (no all-empty ones; `top` only for --top-k > 1)."""
    classes = class_columns(frame)
    keep = [c for c in frame.columns if c in classes or frame[c].replace("", np.nan).notna().any()]
    if frame.attrs.get("top_k", 1) <= 1:
        keep = [c for c in keep if c != "top"]
    return frame[keep]


def format_table(frame: pd.DataFrame) -> str:
    return _visible(frame).to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="")


def _record(row: pd.Series, top_k: int, classes: tuple[str, ...]) -> dict:
    out = {k: _plain(row[k]) for k in ROW_COLUMNS if k not in ("x", "y", "width", "height", "top", "probability")}
    out["box"] = None if pd.isna(row["face"]) else [int(row[k]) for k in ("x", "y", "width", "height")]
    out["probability"] = _plain(row["probability"])
    has = not pd.isna(row["face"])
    out["probabilities"] = {name: float(row[name]) for name in classes} if has else None
    if top_k > 1 and has:
        ranked = sorted(classes, key=lambda n: -row[n])[:top_k]
        out["top"] = [{"emotion": n, "probability": float(row[n])} for n in ranked]
    return out


def _plain(value):
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def format_json(frame: pd.DataFrame) -> str:
    """{"run", "tta", "faces", "predictions": [one object per face: image, frame, time_s, face, box, score,
    note, emotion, probability, probabilities (, top)]}."""
    top_k = frame.attrs.get("top_k", 1)
    predictions = [_record(row, top_k, class_columns(frame)) for _, row in frame.iterrows()]
    head = {k: frame.attrs.get(k) for k in ("run", "tta", "faces")}
    return json.dumps({**head, "predictions": predictions}, indent=2)


def format_jsonl(frame: pd.DataFrame) -> str:
    top_k = frame.attrs.get("top_k", 1)
    return "\n".join(json.dumps(_record(row, top_k, class_columns(frame))) for _, row in frame.iterrows())


def format_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.6f").rstrip("\n")


def render(frame: pd.DataFrame, fmt: str) -> str:
    renderers = {"table": format_table, "json": format_json, "jsonl": format_jsonl, "csv": format_csv}
    if fmt not in renderers:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return renderers[fmt](frame)


def run_job(path: str, run_dir: str, options: Options, fmt: str, batch_args: dict | None = None) -> str:
    """What `jobs/predict.py` prints: the rows in `fmt` (the summary logged), or with
    `batch_args` (workers, output, shard_files, address, gpus_per_worker) the batch path's line."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if batch_args and (batch_args.get("workers") is not None or batch_args.get("output") is not None):
        from fer_dist import batch

        if batch_args.get("workers") is None or batch_args.get("output") is None:
            raise UserError("--workers and --output go together: the batch path writes Parquet parts to --output")
        done = batch.run(path, run_dir, options, **batch_args)
        return f"{done['files']} files in {done['shards']} shards: {done['output']}"
    frame = predict(path, run_dir, options)
    log.info(summary(frame))
    return render(frame, fmt)


def summary(frame: pd.DataFrame) -> str:
    """One line for the log: files, faces found, notes."""
    faces_found = int(frame["face"].notna().sum())
    notes = frame["note"].replace("", np.nan).dropna().value_counts()
    said = "; ".join(f"{n}: {c}" for n, c in notes.items())
    return f"predict: {frame['image'].nunique()} file(s), {faces_found} face(s) read" + (f"; {said}" if said else "")


__all__ = [
    "FORMATS",
    "Options",
    "check_classes",
    "check_options",
    "class_columns",
    "format_csv",
    "format_json",
    "format_jsonl",
    "format_table",
    "image_paths",
    "input_paths",
    "open_images",
    "open_photo",
    "predict",
    "score",
    "Source",
    "read_faces",
    "render",
    "run_job",
    "summary",
]
