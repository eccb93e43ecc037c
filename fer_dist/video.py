"""Video files read frame by frame at a chosen rate (OpenCV, `opencv-python-headless<5`: its
wheel carries the FFmpeg decoders).

`frames(uri, fps)` yields `Frame(index, time_s, rgb)` for the frames nearest to every 1/fps
seconds (every frame when the video has fewer); a gs:// video is copied to a temporary file
first. A file OpenCV cannot open or decode is a `UserError` naming it.
"""

from __future__ import annotations

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


def frames(uri: str, fps: float) -> Iterator[Frame]:
    if fps <= 0:
        raise UserError(f"--fps {fps}: expected a rate above 0 frames per second")
    cv2 = _cv2()
    local, tmp = storage.local_path(uri), None
    if local is None:
        fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(uri)[1])
        with os.fdopen(fd, "wb") as f:
            f.write(storage.read_bytes(uri))
        local = tmp
    capture = cv2.VideoCapture(local)
    try:
        if not capture.isOpened():
            raise UserError(f"{uri}: not a readable video (OpenCV cannot open it)")
        rate = capture.get(cv2.CAP_PROP_FPS) or 0.0
        rate = rate if 0 < rate < 1000 else 25.0  # some containers do not say
        step = max(1.0, rate / fps)  # frames between samples
        index, next_sample, yielded = 0, 0.0, 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            if index + 1e-9 >= next_sample:
                yield Frame(index, round(index / rate, 3), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                yielded += 1
                next_sample += step
            index += 1
        if yielded == 0:
            raise UserError(f"{uri}: not a readable video (no frame could be decoded)")
    finally:
        capture.release()
        if tmp:
            os.unlink(tmp)


__all__ = ["VIDEO_SUFFIXES", "Frame", "frames", "is_video"]
