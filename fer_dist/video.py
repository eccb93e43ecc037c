"""Video files read frame by frame at a chosen rate (OpenCV, `opencv-python-headless<5`: its
wheel carries the FFmpeg decoders).

`frames(uri, fps)` yields `Frame(index, time_s, rgb)` for the first frame at or after every
1/fps seconds (every frame when the video has fewer); a gs:// video is copied to a temporary
file first. A file OpenCV cannot open or decode is a `UserError` naming it (`check` tries one).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fer_dist import storage
from fer_dist.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass(frozen=True)
class Frame:
    index: int  # in the video, from 0
    time_s: float
    rgb: np.ndarray  # uint8 [H, W, 3]


def is_video(uri: str) -> bool:
    return uri.lower().endswith(VIDEO_SUFFIXES)


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise UserError(f"reading video needs OpenCV ({e}): pip install 'opencv-python-headless<5'") from None
    return cv2


@contextlib.contextmanager
def _local_copy(uri: str):
    """A local path of the video: itself, or a temporary copy of a gs:// one (removed after)."""
    local = storage.local_path(uri)
    if local is not None:
        yield local
        return
    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(uri)[1])
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(storage.read_bytes(uri))
        yield tmp
    finally:
        os.unlink(tmp)


def frames(uri: str, fps: float) -> Iterator[Frame]:
    """The first frame at or after every 1/fps seconds (frames between are skipped undecoded)."""
    if fps <= 0:
        raise UserError(f"--fps {fps}: expected a rate above 0 frames per second")
    cv2 = _cv2()
    with _local_copy(uri) as local:
        capture = cv2.VideoCapture(local)
        try:
            if not capture.isOpened():
                raise UserError(f"{uri}: not a readable video (OpenCV cannot open it)")
            rate = capture.get(cv2.CAP_PROP_FPS) or 0.0
            known = 0 < rate < 1000  # some containers do not say: time from the decoder's timestamps
            step = max(1.0, rate / fps) if known else 1.0
            index, next_sample, next_time, yielded = 0, 0.0, 0.0, 0
            while capture.grab():
                if known:
                    take, time_s = index + 1e-9 >= next_sample, index / rate
                else:
                    time_s = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
                    take = time_s + 1e-9 >= next_time
                if take:
                    ok, bgr = capture.retrieve()
                    if not ok:
                        break
                    yield Frame(index, round(time_s, 3), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                    yielded += 1
                    next_sample, next_time = next_sample + step, next_time + 1 / fps
                index += 1
            if yielded == 0:
                raise UserError(f"{uri}: not a readable video (no frame could be decoded)")
        finally:
            capture.release()


def check(uri: str) -> None:
    """UserError unless the video opens and its first frame decodes (before a model is loaded)."""
    first = frames(uri, 1.0)
    try:
        next(first)
    finally:
        first.close()


__all__ = ["VIDEO_SUFFIXES", "Frame", "check", "frames", "is_video"]
