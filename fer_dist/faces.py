"""Faces in photos and video frames: which boxes of an image the model reads.

`find_faces(image, mode, detector)` returns a `Found`: the faces (each a square box in image
pixels, the detector's score and its own box) and a note when something was not as asked.

Modes (`--faces`):
- `whole`: the whole image is one face (face crops, as FER-2013's; what predict did before).
- `detect`: the detector's faces; an image without one gets a row saying "no face found".
- `auto` (the default): images no larger than `CROP_MAX_SIDE` on their longer side are face
  crops and read whole; larger images are searched, and a face-crop-like image (near square,
  `CROP_ASPECT`) in which the detector finds nothing is read whole, noted "no face detected:
  read whole" (detectors often miss tight crops); otherwise, and always for video frames,
  "no face found".

The detector is MTCNN (`mtcnn` 1.0, MIT; its weights ship inside its wheel, so it works
offline; TensorFlow). `crop_box` turns its box into the square the model reads: side
`CROP_SCALE` x the box's longer side, centred `CROP_SHIFT` x the box's height above the box's
centre, moved inside the image where it fits (pixels outside are black). The constants were
measured on FER-2013 faces pasted at known squares (`benchmarks/faces.py`, docs/inference.md):
MTCNN's box on a FER-2013 face is the face's square to 2% (side ratio 0.98, centre shift 0.007
of its height), so the square is the box's longer side, on its centre.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

FACE_MODES = ("auto", "detect", "whole")
CROP_MAX_SIDE = 96  # auto: an image this small (or smaller) is a face crop, read whole
CROP_ASPECT = 1.25  # auto: a larger image this close to square (not 4:3) may be a tight crop
MIN_SCORE = 0.9  # the detector's faces below this confidence are dropped
MIN_FACE = 20  # pixels: the smallest face searched for (MTCNN's pyramid starts there)
DETECT_MAX_SIDE = 1600  # larger images are searched at this size, boxes scaled back
CROP_SCALE = 1.0  # measured: see the module docstring
CROP_SHIFT = 0.0

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class Face:
    """One face: the square the model reads, the detector's score and box (None when read whole)."""

    box: Box
    score: float | None = None
    detected: Box | None = None
    keypoints: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Found:
    faces: list[Face]
    note: str = ""  # "" | "no face found" | "no face detected: read whole"


def crop_box(detected: Box, width: int, height: int) -> Box:
    """The square the model reads for a detector box (see the module docstring)."""
    x, y, w, h = detected
    side = max(1, round(CROP_SCALE * max(w, h)))
    cx, cy = x + w / 2, y + h / 2 - CROP_SHIFT * h
    left, top = round(cx - side / 2), round(cy - side / 2)
    if side <= width:  # inside the image where it fits
        left = min(max(left, 0), width - side)
    if side <= height:
        top = min(max(top, 0), height - side)
    return (left, top, side, side)


_BUILD_LOCK = threading.Lock()  # one MTCNN built at a time (the environment is changed meanwhile)


@contextlib.contextmanager
def _tf_keras_is_keras_3():
    """MTCNN's networks subclass TensorFlow's Keras alias (tf dot keras). Where TF_USE_LEGACY_KERAS
    is set (Ray sets it in every Train worker; some setups set it everywhere) the alias means
    tf_keras, and without that package installed the import fails. TensorFlow resolves the alias
    once, on first use: made here, without the variable, it is Keras 3 (what this package uses)
    for the whole process (an alias already resolved as tf_keras cannot be changed: MTCNN then
    fails as it would without this). The variable is unset for the whole process meanwhile:
    Detector builds its network under a lock."""
    legacy = os.environ.get("TF_USE_LEGACY_KERAS")
    if legacy is None or importlib.util.find_spec("tf_keras") is not None:
        yield
        return
    del os.environ["TF_USE_LEGACY_KERAS"]
    try:
        yield
    finally:
        os.environ["TF_USE_LEGACY_KERAS"] = legacy


class Detector:
    """MTCNN, built on first use (TensorFlow); `boxes(rgb)` -> [(box, score, keypoints)]."""

    def __init__(self, min_score: float = MIN_SCORE, min_face: int = MIN_FACE):
        self.min_score, self.min_face = min_score, min_face
        self._mtcnn = None

    def _net(self):
        if self._mtcnn is None:
            with _BUILD_LOCK, _tf_keras_is_keras_3():
                try:
                    from mtcnn import MTCNN
                except ImportError as e:  # a dependency of the package: name the fix
                    from fer_dist.errors import UserError

                    raise UserError(f"face detection needs the mtcnn package ({e}): pip install 'mtcnn>=1.0'") from None
                self._mtcnn = MTCNN(device="CPU:0")
        return self._mtcnn

    def boxes(self, rgb: np.ndarray) -> list[tuple[Box, float, dict]]:
        height, width = rgb.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
        if scale < 1.0:
            small = Image.fromarray(rgb).resize(
                (round(width * scale), round(height * scale)), Image.Resampling.BILINEAR
            )
            rgb = np.asarray(small)
        found = self._net().detect_faces(rgb, min_face_size=max(12, round(self.min_face * scale)))
        out = []
        for face in found or []:
            score = float(face["confidence"])
            if score < self.min_score:
                continue
            x, y, w, h = (v / scale for v in face["box"])
            points = {k: (round(px / scale, 1), round(py / scale, 1)) for k, (px, py) in face["keypoints"].items()}
            out.append(((round(x), round(y), round(w), round(h)), score, points))
        return sorted(out, key=lambda f: (f[0][0], f[0][1]))  # left to right


def _crop_like(width: int, height: int) -> bool:
    return max(width, height) / max(1, min(width, height)) <= CROP_ASPECT


def find_faces(image: Image.Image, mode: str, detector: Detector | None, frame: bool = False) -> Found:
    """The faces to read in `image` (PIL), by `mode` (see the module docstring); a video `frame`
    is never taken for a face crop."""
    width, height = image.size
    whole = Face(box=(0, 0, width, height))
    if mode == "whole" or (mode == "auto" and max(width, height) <= CROP_MAX_SIDE):
        return Found([whole])
    rgb = np.asarray(image.convert("RGB"))
    faces = [
        Face(box=crop_box(box, width, height), score=score, detected=box, keypoints=points)
        for box, score, points in detector.boxes(rgb)
    ]
    if faces:
        return Found(faces)
    if mode == "auto" and not frame and _crop_like(width, height):
        return Found([whole], note="no face detected: read whole")
    return Found([], note="no face found")


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


__all__ = ["FACE_MODES", "Box", "Detector", "Face", "Found", "crop_box", "find_faces", "iou"]
