"""Pictures of predictions: images with their faces' boxes and top emotions drawn
(`predict --annotate DIR`), and a video's emotions over time (`predict --plot FILE.png`).

Nothing is overwritten: `Writer` refuses, before the model loads, an output file (or a video's
frame directory) that exists.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from fer_dist import EMOTIONS, storage
from fer_dist.errors import UserError

# One colour per emotion (matplotlib's tab10), so that a picture reads at a glance.
COLOURS = dict(zip(EMOTIONS, ("#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f")))
_OTHER_COLOURS = ("#17becf", "#bcbd22", "#e377c2", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def colour_of(name: str, classes: tuple[str, ...] = EMOTIONS) -> str:
    """A class's colour: FER-2013's emotions keep theirs; other classes take the palette's
    colours in class order, skipping those the FER-2013 classes present already use."""
    if name in COLOURS:
        return COLOURS[name]
    if name not in classes:
        return "#ffffff"
    taken = {COLOURS[c] for c in classes if c in COLOURS}
    free = [c for c in (*_OTHER_COLOURS, *COLOURS.values()) if c not in taken] or list(_OTHER_COLOURS)
    others = [c for c in classes if c not in COLOURS]
    return free[others.index(name) % len(free)]


class Writer:
    """Writes DIR/<image name> for each image, DIR/<video name>/frame_<n>.jpg for each sampled frame."""

    def __init__(self, directory: str, paths: list[str]):
        from fer_dist.video import is_video

        if storage.exists(directory) and not storage.is_dir(directory):
            raise UserError(f"--annotate {directory}: a file, not a directory")
        self.directory = directory
        self.targets = {}
        for path in paths:
            name = os.path.basename(path.rstrip("/"))
            target = storage.join(directory, name + "_frames" if is_video(path) else name)
            if storage.exists(target):
                raise UserError(f"--annotate {directory}: {target} exists (not overwritten; remove it or pick another)")
            self.targets[path] = target

    def write(self, sources: list, frame: pd.DataFrame) -> None:
        for source in sources:
            mine = frame[(frame["image"] == source.path) & _same_frame(frame["frame"], source.frame)]
            picture = draw(source.image, mine, classes_of(frame))
            if source.frame is None:
                uri, fmt = self.targets[source.path], _format_of(source.path)
            else:
                uri, fmt = storage.join(self.targets[source.path], f"frame_{source.frame:06d}.jpg"), "JPEG"
            buffer = io.BytesIO()
            picture.save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
            storage.write_bytes(uri, buffer.getvalue())


def _same_frame(column: pd.Series, frame: int | None) -> pd.Series:
    return column.isna() if frame is None else column == frame


def _format_of(path: str) -> str:
    return "PNG" if path.lower().endswith(".png") else "JPEG"


def classes_of(frame: pd.DataFrame) -> tuple[str, ...]:
    """The class names of predict's rows (`predict` keeps them in the frame's attrs)."""
    return tuple(frame.attrs.get("class_names") or EMOTIONS)


def draw(image: Image.Image, rows: pd.DataFrame, classes: tuple[str, ...] = EMOTIONS) -> Image.Image:
    """A copy of `image` (RGB) with each face's box and "emotion p" above it; a note in the corner
    when the image has a row without a face."""
    picture = image.convert("RGB")
    pen = ImageDraw.Draw(picture)
    scale = max(picture.size) / 640
    font = ImageFont.load_default(size=max(12, round(16 * scale)))
    width = max(2, round(3 * scale))
    for _, row in rows.iterrows():
        if pd.isna(row["face"]):
            pen.text((4, 4), row["note"] or "no face", fill="#ff0000", font=font, stroke_width=2, stroke_fill="#ffffff")
            continue
        x, y, w, h = (int(row[k]) for k in ("x", "y", "width", "height"))
        colour = colour_of(row["emotion"], classes)
        pen.rectangle((x, y, x + w - 1, y + h - 1), outline=colour, width=width)
        label = f"{row['emotion']} {row['probability']:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), label, font=font)
        ty = y - (bottom - top) - 2 * width if y - (bottom - top) - 2 * width >= 0 else y + h + width
        pen.rectangle((x, ty, x + right - left + 2 * width, ty + bottom - top + 2 * width), fill=colour)
        pen.text((x + width - left, ty + width - top), label, fill="#ffffff", font=font)
    return picture


def plot_over_time(frame: pd.DataFrame, path: str) -> None:
    """Each video's emotions over time (the largest face of each sampled frame), one panel per video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    videos = [v for v in frame["image"].unique() if frame.loc[frame["image"] == v, "frame"].notna().any()]
    fig, axes = plt.subplots(len(videos), 1, figsize=(10, 3.2 * len(videos)), squeeze=False)
    for ax, video in zip(axes[:, 0], videos):
        rows = frame[(frame["image"] == video) & frame["face"].notna()].copy()
        rows["area"] = rows["width"].astype(float) * rows["height"].astype(float)
        largest = rows.sort_values("area", ascending=False).drop_duplicates("frame").sort_values("time_s")
        classes = classes_of(frame)
        for name in classes:
            colour = colour_of(name, classes)
            ax.plot(largest["time_s"], largest[name], label=name, color=colour, marker=".", linewidth=1.5)
        missing = sorted(set(frame.loc[frame["image"] == video, "time_s"]) - set(largest["time_s"]))
        if missing:
            ax.plot(missing, np.zeros(len(missing)), "x", color="black", label="no face")
        ax.set_title(os.path.basename(video))
        ax.set_xlabel("time (s)")
        ax.set_ylabel("probability")
        ax.set_ylim(0, 1)
        ax.legend(loc="upper right", fontsize=8, ncol=4)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(path, buffer.getvalue())


__all__ = ["COLOURS", "Writer", "colour_of", "draw", "plot_over_time"]
