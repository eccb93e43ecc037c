"""python benchmarks/faces.py [--data FER2013_CSV] [--photos 100] [--out benchmarks/faces.json]

Face detection on generated photos: FER-2013 validation faces (PublicTest) enlarged to
100-180 px and pasted apart, 1 to 4 per photo, on textured 640x480 backgrounds
(`synthetic.photo_with_faces`), then found with `faces.Detector` (MTCNN). Reports:

- recall: pasted faces whose read square (`faces.crop_box` of a detector box) overlaps the
  pasted square with IoU > 0.5; extra: detections that match no pasted face;
- the detector box against the pasted square, which `faces.CROP_SCALE` and `CROP_SHIFT` are
  set from: the median of side / max(box w, h) and of (square centre - box centre) / box h;
- the IoU of the read square with the pasted one, and seconds per photo.

Without the FER-2013 file it uses the sample face that ships with matplotlib, flipped and
tinted. Writes JSON to --out and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "fer2013", "fer2013.csv.gz")


def face_source(data: str, n: int, seed: int) -> tuple[list[np.ndarray], str]:
    from fer_dist import data as D
    from fer_dist import synthetic

    rng = np.random.default_rng(seed)
    if data and os.path.exists(data):
        splits, _ = D.read_csv(data)
        val = splits["val"]
        picked = rng.choice(len(val), size=min(n, len(val)), replace=False)
        return [val.images[i] for i in picked], f"{os.path.basename(data)} PublicTest"
    face = synthetic.sample_face()
    variants = [face, face[:, ::-1], (face * [1.0, 0.9, 0.8]).astype(np.uint8), face.mean(axis=2).astype(np.uint8)]
    return [variants[i % len(variants)] for i in range(n)], "matplotlib's sample face (4 variants)"


def measure(photos: int, data: str, seed: int) -> dict:
    from fer_dist import faces, synthetic

    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, photos)
    pool, source = face_source(data, int(counts.sum()), seed)
    detector = faces.Detector()
    detector.boxes(np.zeros((64, 64, 3), np.uint8))  # build the networks outside the timing
    found = extra = 0
    ious, scales, shifts, seconds = [], [], [], []
    start = 0
    for p, k in enumerate(counts):
        photo, squares = synthetic.photo_with_faces(pool[start : start + k], seed=seed + p)
        start += k
        t = time.perf_counter()
        boxes = detector.boxes(np.asarray(photo))
        seconds.append(time.perf_counter() - t)
        reads = [faces.crop_box(box, *photo.size) for box, _, _ in boxes]
        matched = set()
        for square in squares:
            sx, sy, side, _ = square
            for (x, y, w, h), _, _ in boxes:  # the detector's box of this face: its centre inside the square
                if sx <= x + w / 2 <= sx + side and sy <= y + h / 2 <= sy + side:
                    scales.append(side / max(w, h))
                    shifts.append(((y + h / 2) - (sy + side / 2)) / h)
                    break
            best = max(range(len(reads)), key=lambda i: faces.iou(reads[i], square), default=None)
            if best is None or faces.iou(reads[best], square) <= 0.5:
                continue
            found += 1
            matched.add(best)
            ious.append(faces.iou(reads[best], square))
        extra += len(reads) - len(matched)
    total = int(counts.sum())
    return {
        "command": "python benchmarks/faces.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "faces_from": source,
        "photos": photos,
        "faces": total,
        "found": found,
        "detected": len(scales),  # a detector box centred in the pasted square, whatever its read square's IoU
        "recall": found / total,
        "extra_detections": extra,
        "median_iou": float(np.median(ious)) if ious else None,
        "box_to_square": {
            "median_side_over_box": float(np.median(scales)) if scales else None,
            "median_box_centre_below_square_centre_over_h": float(np.median(shifts)) if shifts else None,
            "crop_scale_used": faces.CROP_SCALE,
            "crop_shift_used": faces.CROP_SHIFT,
        },
        "seconds_per_photo": float(np.median(seconds)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "faces.json"))
    args = parser.parse_args()
    from fer_dist import logs

    logs.quiet_tensorflow_import()
    report = measure(args.photos, args.data, args.seed)
    with open(args.out, "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    b = report["box_to_square"]
    print(
        f"faces from {report['faces_from']}: {report['found']}/{report['faces']} found "
        f"(recall {report['recall']:.3f}, IoU > 0.5; {report['detected']} detected) in {report['photos']} photos, "
        f"{report['extra_detections']} extra; median IoU {report['median_iou']}; "
        f"square side / box {b['median_side_over_box']}, centre shift {b['median_box_centre_below_square_centre_over_h']}; "
        f"{report['seconds_per_photo']:.2f} s per photo"
    )


if __name__ == "__main__":
    main()
