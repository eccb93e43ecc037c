"""The built-in synthetic dataset: procedurally drawn 48x48 gray faces in FER-2013's 7 classes.

    python jobs/train.py   # trains the demo on this built-in dataset

`generate(n, seed)` returns `n` uint8 images [n, 48, 48] and int64 labels [n] in
FER-2013's label order (`fer_dist.EMOTIONS`: angry, disgust, fear, happy, sad,
surprise, neutral), with balanced classes, shuffled, fully determined by `(n, seed)`.

Each face is an oval head on a background. Its class is carried jointly by three
parts; every shape but the two smiles (happy only) is shared by two or more classes,
so the combination decides (see `PROTOTYPES`):

- mouth: smile, grin, frown, flat line, wavy line, open O, clenched teeth;
- eyebrows: flat, furrowed V, slanted inward-up (sad), raised arches;
- eyes: normal, narrowed, wide open.

Nuisance on top: feature placement and size jitter, skin and background tones,
hair, pose (rotation +-15 degrees, translation +-4 px, scale 0.85-1.15), occluding
rectangles and bars (sometimes over the mouth or an eye), a lighting gradient,
contrast and brightness, blur, and Gaussian noise. Faces are drawn at 2x and
box-downsampled, so edges are antialiased.

A linear softmax classifier on the raw pixels stays well below 60% test accuracy
on this data, while the compact CNN of the demo run reaches over 90%.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from fer_dist import IMAGE_PIXELS, NUM_CLASSES

SCALE = 2  # faces are drawn at SCALE x the output size, then box-downsampled
CANVAS = IMAGE_PIXELS * SCALE

Prototype = tuple[str, str, str]  # (mouth, brows, eyes)

# Each class is a set of (mouth, brows, eyes) prototypes. Every mouth, brow and eye
# shape but "smile" and "grin" is shared by two or more classes; the combination decides.
PROTOTYPES: tuple[tuple[Prototype, ...], ...] = (
    # 0 angry
    (("flat", "furrowed", "narrow"), ("teeth", "furrowed", "narrow")),
    # 1 disgust
    (("wavy", "furrowed", "normal"), ("frown", "furrowed", "normal")),
    # 2 fear
    (("teeth", "sad", "wide"), ("open", "sad", "wide"), ("teeth", "raised", "wide")),
    # 3 happy
    (("smile", "flat", "normal"), ("grin", "flat", "normal"), ("smile", "flat", "narrow"), ("grin", "flat", "narrow")),
    # 4 sad
    (("frown", "sad", "normal"), ("wavy", "sad", "normal")),
    # 5 surprise
    (("open", "raised", "wide"),),
    # 6 neutral
    (("flat", "flat", "normal"),),
)

Draw = ImageDraw.ImageDraw
Rng = np.random.Generator
# Part painters, keyed by shape name in the tables EYES, BROWS and MOUTHS below.
EyePainter = Callable[[Draw, float, float, float, float, Rng], None]  # (x, y, skin, ink, rng)
BrowPainter = Callable[[Draw, float, float, int, float, Rng], None]  # (x, y, side, ink, rng)
MouthPainter = Callable[[Draw, float, float, float, float, float, Rng], None]  # (x, y, half_width, skin, ink, rng)


def generate(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images as uint8 [n, 48, 48] (0-255) and int64 labels [n] in 0..6, balanced classes
    (n // 7 each, remainder spread), shuffled, fully determined by (n, seed)."""
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % NUM_CLASSES)
    faces = np.empty((n, IMAGE_PIXELS, IMAGE_PIXELS), dtype=np.float32)
    for i, label in enumerate(labels):
        faces[i] = _render_face(int(label), rng)
    return _photometric(faces, rng), labels


# ----------------------------------------------------------------------------
# Geometry: one face, drawn at CANVAS x CANVAS in face coordinates, then posed.
# ----------------------------------------------------------------------------
def _render_face(label: int, rng: Rng) -> np.ndarray:
    """One posed, occluded face as float32 [48, 48] in 0-255 (before photometric nuisance)."""
    prototypes = PROTOTYPES[label]
    mouth, brows, eyes = prototypes[rng.integers(len(prototypes))]
    background = float(rng.uniform(0, 255))
    skin = float(np.clip(background + rng.choice([-1, 1]) * rng.uniform(40, 140), 90, 235))
    ink = max(0.0, skin - rng.uniform(70, 130))  # features are darker than the skin

    image = Image.new("L", (CANVAS, CANVAS), int(background))
    draw = ImageDraw.Draw(image)
    cx = CANVAS / 2 + rng.uniform(-2, 2)
    cy = CANVAS / 2 + rng.uniform(-1, 3)
    _draw_head(draw, cx, cy, skin, rng)
    eye_dx, eye_y = rng.uniform(11, 15), cy - rng.uniform(6, 10)
    mouth_y = cy + rng.uniform(15, 20)
    for side in (-1, 1):
        EYES[eyes](draw, cx + side * eye_dx, eye_y, skin, ink, rng)
        BROWS[brows](draw, cx + side * eye_dx, eye_y - rng.uniform(8, 10), side, ink, rng)
    _draw_nose(draw, cx, cy, ink, rng)
    MOUTHS[mouth](draw, cx, mouth_y, rng.uniform(9, 13), skin, ink, rng)
    _draw_occluders(draw, [(cx - eye_dx, eye_y), (cx + eye_dx, eye_y), (cx, mouth_y)], rng)
    posed = _pose(image, background, rng).reduce(SCALE)
    return np.asarray(posed, dtype=np.float32)


def _draw_head(draw: Draw, cx: float, cy: float, skin: float, rng: Rng) -> None:
    half_w, half_h = rng.uniform(27, 33), rng.uniform(34, 40)
    draw.ellipse((cx - half_w, cy - half_h, cx + half_w, cy + half_h), fill=int(skin))
    if rng.random() < 0.6:  # hair: a cap over the top of the head
        hair = int(rng.uniform(0, 255))
        top = cy - half_h - rng.uniform(0, 4)
        draw.chord((cx - half_w - 2, top, cx + half_w + 2, cy + half_h), 180, 360, fill=hair)
        draw.ellipse((cx - half_w + 3, cy - half_h + rng.uniform(8, 14), cx + half_w - 3, cy + half_h), fill=int(skin))


def _draw_nose(draw: Draw, cx: float, cy: float, ink: float, rng: Rng) -> None:
    """Two nostrils, from as dark as the other features to half-way to white."""
    y = cy + rng.uniform(4, 8)
    tone = int(ink + 0.5 * (255 - ink) * rng.random())
    for x in (cx - 3, cx + 3):
        draw.ellipse((x - 1.2, y - 1.2, x + 1.2, y + 1.2), fill=tone)


# --- eyes --------------------------------------------------------------------
def _eye(draw: Draw, x: float, y: float, half_w: float, half_h: float, skin: float, ink: float, pupil: float) -> None:
    white = min(255.0, skin + 40)
    draw.ellipse((x - half_w, y - half_h, x + half_w, y + half_h), fill=int(white), outline=int(ink), width=2)
    draw.ellipse((x - pupil, y - pupil, x + pupil, y + pupil), fill=int(ink))


def _eye_normal(draw: Draw, x: float, y: float, skin: float, ink: float, rng: Rng) -> None:
    _eye(draw, x, y, rng.uniform(5, 6.5), rng.uniform(2.8, 3.6), skin, ink, pupil=2.4)


def _eye_wide(draw: Draw, x: float, y: float, skin: float, ink: float, rng: Rng) -> None:
    _eye(draw, x, y, rng.uniform(5.5, 7), rng.uniform(5.2, 6.5), skin, ink, pupil=2.2)


def _eye_narrow(draw: Draw, x: float, y: float, skin: float, ink: float, rng: Rng) -> None:
    half_w = rng.uniform(5, 6.5)
    draw.line((x - half_w, y, x + half_w, y), fill=int(ink), width=3)


EYES: dict[str, EyePainter] = {
    "normal": _eye_normal,
    "wide": _eye_wide,
    "narrow": _eye_narrow,
}


# --- brows (side -1 is the left brow, +1 the right) ----------------------------
def _brow(draw: Draw, points: list[tuple[float, float]], ink: float) -> None:
    draw.line(points, fill=int(ink), width=3, joint="curve")


def _brow_slanted(draw: Draw, x: float, y: float, side: int, ink: float, inner_drop: float) -> None:
    """A straight brow whose inner end (towards the nose) is `inner_drop` px lower than its outer end."""
    half = 6.5
    _brow(draw, [(x - side * half, y + inner_drop / 2), (x + side * half, y - inner_drop / 2)], ink)


def _brow_flat(draw: Draw, x: float, y: float, side: int, ink: float, rng: Rng) -> None:
    _brow_slanted(draw, x, y, side, ink, inner_drop=rng.uniform(-1.5, 1.5))


def _brow_furrowed(draw: Draw, x: float, y: float, side: int, ink: float, rng: Rng) -> None:
    _brow_slanted(draw, x, y + 2, side, ink, inner_drop=rng.uniform(6, 9))


def _brow_sad(draw: Draw, x: float, y: float, side: int, ink: float, rng: Rng) -> None:
    _brow_slanted(draw, x, y, side, ink, inner_drop=-rng.uniform(6, 9))


def _brow_raised(draw: Draw, x: float, y: float, side: int, ink: float, rng: Rng) -> None:
    y -= rng.uniform(4, 6)
    arch = rng.uniform(4, 5.5)
    _brow(draw, [(x - 7, y + arch), (x, y), (x + 7, y + arch)], ink)


BROWS: dict[str, BrowPainter] = {
    "flat": _brow_flat,
    "furrowed": _brow_furrowed,
    "sad": _brow_sad,
    "raised": _brow_raised,
}


# --- mouths ------------------------------------------------------------------
def _curve(x: float, y: float, half_w: float, sag: float, steps: int = 8) -> list[tuple[float, float]]:
    """A parabola from corner to corner whose middle sits `sag` px below the corners."""
    xs = np.linspace(-1.0, 1.0, steps)
    return [(x + half_w * u, y + sag * (1 - u * u) - sag / 2) for u in xs]


def _mouth_smile(draw: Draw, x: float, y: float, half_w: float, skin: float, ink: float, rng: Rng) -> None:
    draw.line(_curve(x, y, half_w, rng.uniform(5, 8)), fill=int(ink), width=3, joint="curve")


def _mouth_frown(draw: Draw, x: float, y: float, half_w: float, skin: float, ink: float, rng: Rng) -> None:
    draw.line(_curve(x, y, half_w, -rng.uniform(5, 8)), fill=int(ink), width=3, joint="curve")


def _mouth_flat(draw: Draw, x: float, y: float, half_w: float, skin: float, ink: float, rng: Rng) -> None:
    tilt = rng.uniform(-1, 1)
    draw.line((x - half_w, y - tilt, x + half_w, y + tilt), fill=int(ink), width=3)


def _mouth_wavy(draw: Draw, x: float, y: float, half_w: float, skin: float, ink: float, rng: Rng) -> None:
    amplitude, phase = rng.uniform(1.8, 2.8), rng.choice([0.0, math.pi])
    us = np.linspace(-1.0, 1.0, 12)
    points = [(x + half_w * u, y + amplitude * math.sin(2 * math.pi * u + phase)) for u in us]
    draw.line(points, fill=int(ink), width=3, joint="curve")


def _mouth_open(draw: Draw, x: float, y: float, half_w: float, skin: float, ink: float, rng: Rng) -> None:
    rx, ry = rng.uniform(4.5, 6.5), rng.uniform(6, 8)
    draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=int(ink * 0.6), outline=int(ink), width=2)


def _mouth_teeth(draw: Draw, x: float, y: float, half_w: float, skin: float, ink: float, rng: Rng) -> None:
    half_h = rng.uniform(3.5, 4.5)
    teeth = int(min(255.0, skin + 50))
    box = (x - half_w, y - half_h, x + half_w, y + half_h)
    draw.rounded_rectangle(box, radius=2, fill=teeth, outline=int(ink), width=2)
    draw.line((x - half_w, y, x + half_w, y), fill=int(ink), width=1)


def _mouth_grin(draw: Draw, x: float, y: float, half_w: float, skin: float, ink: float, rng: Rng) -> None:
    sag = rng.uniform(7, 9)
    lower = _curve(x, y, half_w, sag)
    upper = _curve(x, y, half_w, sag * 0.25)
    draw.polygon(upper + lower[::-1], fill=int(ink * 0.6), outline=int(ink))
    draw.line(upper, fill=int(min(255.0, skin + 50)), width=3, joint="curve")


MOUTHS: dict[str, MouthPainter] = {
    "smile": _mouth_smile,
    "grin": _mouth_grin,
    "frown": _mouth_frown,
    "flat": _mouth_flat,
    "wavy": _mouth_wavy,
    "open": _mouth_open,
    "teeth": _mouth_teeth,
}


# --- occlusion and pose -------------------------------------------------------
def _draw_occluders(draw: Draw, features: list[tuple[float, float]], rng: Rng) -> None:
    """0-2 random rectangles or bars; with probability 0.25 one half-covers the mouth or an eye."""
    if rng.random() < 0.25:
        fx, fy = features[rng.integers(len(features))]
        half_w, half_h = rng.uniform(4, 8), rng.uniform(3, 6)
        ox, oy = fx + rng.choice([-1, 1]) * rng.uniform(4, 8), fy + rng.uniform(-3, 3)
        draw.rectangle((ox - half_w, oy - half_h, ox + half_w, oy + half_h), fill=int(rng.uniform(0, 255)))
    for _ in range(rng.integers(0, 3)):
        x, y = rng.uniform(0, CANVAS, size=2)
        length, thickness, angle = rng.uniform(10, 40), rng.uniform(3, 8), rng.uniform(0, math.pi)
        dx, dy = math.cos(angle), math.sin(angle)
        corners = [
            (x + sx * dx * length / 2 - sy * dy * thickness / 2, y + sx * dy * length / 2 + sy * dx * thickness / 2)
            for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
        ]
        draw.polygon(corners, fill=int(rng.uniform(0, 255)))


def _pose(image: Image.Image, background: float, rng: Rng) -> Image.Image:
    """Rotation +-15 degrees, scale 0.85-1.15, translation +-4 output px, about the canvas centre."""
    angle = math.radians(rng.uniform(-15, 15))
    scale = rng.uniform(0.85, 1.15)
    tx, ty = rng.uniform(-4 * SCALE, 4 * SCALE, size=2)
    c = CANVAS / 2
    # PIL maps each output pixel (u, v) back to the input pixel (a u + b v + e, d u + f v + g):
    # the inverse of "rotate and scale about the centre, then translate".
    a, b = math.cos(angle) / scale, math.sin(angle) / scale
    d, f = -b, a
    e = c - a * (c + tx) - b * (c + ty)
    g = c - d * (c + tx) - f * (c + ty)
    return image.transform(
        image.size,
        Image.Transform.AFFINE,
        (a, b, e, d, f, g),
        resample=Image.Resampling.BILINEAR,
        fillcolor=int(background),
    )


# ----------------------------------------------------------------------------
# Photometric nuisance, vectorized over the whole batch.
# ----------------------------------------------------------------------------
def _photometric(faces: np.ndarray, rng: Rng) -> np.ndarray:
    """Lighting gradient, contrast, brightness, blur (30%) and Gaussian noise -> uint8."""
    n = len(faces)
    grid = np.linspace(-1.0, 1.0, IMAGE_PIXELS, dtype=np.float32)
    gx, gy = (rng.uniform(-0.35, 0.35, size=(2, n, 1, 1))).astype(np.float32)
    faces = faces * (1 + gx * grid[None, None, :] + gy * grid[None, :, None])
    mean = faces.mean(axis=(1, 2), keepdims=True)
    contrast = rng.uniform(0.7, 1.3, size=(n, 1, 1)).astype(np.float32)
    brightness = rng.uniform(-40, 40, size=(n, 1, 1)).astype(np.float32)
    faces = (faces - mean) * contrast + mean + brightness
    blurred = rng.random(n) < 0.3
    faces[blurred] = _blur(faces[blurred])
    sigma = rng.uniform(2, 10, size=(n, 1, 1)).astype(np.float32)
    faces += sigma * rng.standard_normal(faces.shape, dtype=np.float32)
    return np.clip(np.rint(faces), 0, 255).astype(np.uint8)


def _blur(faces: np.ndarray) -> np.ndarray:
    """A separable [1, 2, 1] / 4 blur with edge padding."""
    padded = np.pad(faces, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = (padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]) / 4
    return (rows[:, :, :-2] + 2 * rows[:, :, 1:-1] + rows[:, :, 2:]) / 4


# --- photos with faces at known places (face detection tests and benchmarks) ---------------

SAMPLE_FACE_BOX = (148, 108, 232, 232)  # x, y, side: Grace Hopper's face in matplotlib's sample photo


def sample_face() -> np.ndarray:
    """A real face that ships with matplotlib (Grace Hopper, US Navy photo, public domain):
    uint8 RGB [232, 232], cropped loosely as FER-2013's faces are."""
    import os

    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    x, y, side, _ = SAMPLE_FACE_BOX
    with Image.open(path) as photo:
        return np.asarray(photo.convert("RGB").crop((x, y, x + side, y + side)))


def textured_background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An RGB background: a colour gradient, stripes, blobs and noise (no faces)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    tilt = rng.uniform(-0.3, 0.3, (2, 3))
    image = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1]
    period, angle = rng.uniform(12, 40), rng.uniform(0, math.pi)
    image += 25 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)[..., None]
    canvas = Image.fromarray(np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(8, 60)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rectangle((cx - r, cy - r / 2, cx + r, cy + r / 2), fill=fill) if rng.random() < 0.5 else draw.ellipse(
            (cx - r, cy - r, cx + r, cy + r), fill=fill
        )
    return canvas


def photo_with_faces(
    faces: list[np.ndarray], size: tuple[int, int] = (640, 480), sides: tuple[int, int] = (100, 180), seed: int = 0
) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """`faces` (uint8 gray [H, W] or RGB [H, W, 3], square) enlarged to a side in `sides` and
    pasted, apart, on a textured background of `size`: (the RGB photo, the pasted squares as
    (x, y, side, side), in the order of `faces`). ValueError if they do not fit."""
    rng = np.random.default_rng(seed)
    width, height = size
    canvas = textured_background(width, height, rng)
    placed: list[tuple[int, int, int, int]] = []
    for face in faces:
        side = int(rng.integers(sides[0], sides[1] + 1))
        for _ in range(500):
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            gap = side // 8
            if all(
                x + side + gap <= px or px + ps + gap <= x or y + side + gap <= py or py + ps + gap <= y
                for px, py, ps, _ in placed
            ):
                break
        else:
            raise ValueError(f"{len(faces)} faces of {sides} px do not fit in {size}")
        mode = "L" if face.ndim == 2 else "RGB"
        pasted = Image.fromarray(face, mode).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        canvas.paste(pasted, (x, y))
        placed.append((x, y, side, side))
    return canvas, placed
