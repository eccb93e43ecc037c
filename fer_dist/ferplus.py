"""FER+ labels: FER-2013's faces re-labelled by 10 annotators each (Barsoum et al. 2016,
"Training Deep Networks for Facial Expression Recognition with Crowd-Sourced Label
Distribution"; github.com/microsoft/FERPlus, MIT licence).

    python jobs/train.py --data fer2013.csv --labels fer2013new.csv                       # majority labels
    python jobs/train.py --data fer2013.csv --labels fer2013new.csv --set label_mode=probability

The votes file (`fer2013new.csv`) has one row per row of the original `fer2013.csv` (35,887
rows, same order) and the columns `Usage, Image name, neutral, happiness, surprise, sadness,
anger, disgust, fear, contempt, unknown, NF`. A pair whose data-row counts or Usage columns
disagree is refused, naming the first row that differs.

As the FER+ code does (`ferplus.py` `_process_data`), a class with a single vote loses it
(an outlier), then:
- `label_mode=majority` (the paper's majority protocol): a face keeps the class with more than
  half of its votes; faces without one, or whose majority is `unknown` or `NF` (not a face),
  are dropped. Every split is labelled this way.
- `label_mode=probability`: a training face's target is its vote distribution over the
  classes, when the classes hold more than half of its votes (else it is dropped); training
  minimises the cross-entropy against it. Validation and test keep majority labels, so
  evaluation figures are majority accuracy, comparable with the paper's.
- `contempt=false`: seven classes, FER-2013's without contempt; a face whose majority is
  contempt is dropped, and contempt's votes leave the distributions.
"""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np

from fer_dist import storage
from fer_dist.errors import UserError

CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
VOTE_COLUMNS = (*CLASSES, "unknown", "NF")
USAGES = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
LABEL_MODES = ("majority", "probability")


@dataclasses.dataclass(frozen=True)
class Votes:
    """A votes file: per data row its split and its 10 vote counts (VOTE_COLUMNS order)."""

    uri: str
    splits: list[str]  # "train" | "val" | "test" per data row
    counts: np.ndarray  # int64 [rows, 10]


def read_votes(uri: str) -> Votes:
    """The votes file's rows; UserError naming the line of a bad one."""
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise UserError(f"{uri}: no such file or directory") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{uri}: cannot read ({' '.join(str(e).split())})") from None
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    if not rows:
        raise UserError(f"{uri}: empty file")
    header = [name.strip().lower() for name in rows[0]]
    wanted = ["usage", *[c.lower() for c in VOTE_COLUMNS]]
    missing = [name for name in wanted if name not in header]
    if missing:
        raise UserError(
            f"{uri} line 1: missing column {missing[0]!r} (a FER+ votes file has {', '.join(VOTE_COLUMNS)})"
        )
    where = [header.index(name) for name in wanted]
    splits, counts = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(header):
            raise UserError(f"{uri} line {lineno}: expected {len(header)} comma-separated fields, got {len(row)}")
        usage = row[where[0]].strip()
        if usage not in USAGES:
            raise UserError(f"{uri} line {lineno}: Usage {usage!r} is not one of {', '.join(USAGES)}")
        try:
            votes = [int(row[i]) for i in where[1:]]
        except ValueError:
            bad = next(row[i] for i in where[1:] if not row[i].strip().isdigit())
            raise UserError(f"{uri} line {lineno}: vote count {bad!r} is not a whole number") from None
        if min(votes) < 0:
            raise UserError(f"{uri} line {lineno}: a vote count is negative")
        splits.append(USAGES[usage])
        counts.append(votes)
    if not counts:
        raise UserError(f"{uri}: no data rows (only a header)")
    return Votes(uri, splits, np.asarray(counts, np.int64))


def check_aligned(votes: Votes, data_uri: str, row_splits: dict[int, str], data_rows: int) -> None:
    """The votes file and the FER-2013 CSV have the same data rows, each with the same Usage;
    else a UserError naming the first data row that differs (as a line of both files)."""
    if len(votes.splits) != data_rows:
        raise UserError(
            f"{votes.uri} has {len(votes.splits)} data rows, {data_uri} has {data_rows}: a votes file labels the "
            "original fer2013.csv row by row (35,887 rows, in its order)"
        )
    names = {v: k for k, v in USAGES.items()}
    for row in sorted(row_splits):
        if row_splits[row] != votes.splits[row]:
            raise UserError(
                f"{votes.uri} line {row + 2}: Usage {names[votes.splits[row]]} but {data_uri} line {row + 2} is "
                f"{names[row_splits[row]]}: the files' rows are not in the same order"
            )


def classes(contempt: bool) -> tuple[str, ...]:
    return CLASSES if contempt else CLASSES[:-1]


def relabel(counts: np.ndarray, label_mode: str, contempt: bool, train: bool) -> tuple:
    """(keep bool [N], labels int64 [N], targets float32 [N, K] or None) of vote rows [N, 10]:
    the module's protocol (majority everywhere; probability targets on training rows)."""
    votes = np.where(counts <= 1, 0, counts).astype(np.float64)  # single votes are outliers
    total = votes.sum(axis=1)
    k = len(classes(contempt))
    top = votes.argmax(axis=1)
    unique_top = (votes == votes.max(axis=1, keepdims=True)).sum(axis=1) == 1
    majority = (votes.max(axis=1) > 0.5 * total) & unique_top & (top < k)
    if label_mode == "majority" or not train:
        return majority, np.where(majority, top, 0).astype(np.int64), None
    kept = votes[:, :k]
    share = kept.sum(axis=1)
    keep = (share > 0.5 * total) & (share > 0)
    targets = np.divide(kept, share[:, None], out=np.zeros_like(kept), where=share[:, None] > 0)
    return keep, targets.argmax(axis=1).astype(np.int64), targets.astype(np.float32)


def counts_note(before: dict[str, int], after: dict[str, int], label_mode: str, contempt: bool, uri: str) -> str:
    kept = ", ".join(f"{s} {after.get(s, 0)} of {n}" for s, n in before.items())
    return (
        f"FER+ votes {uri}: label_mode={label_mode}, {len(classes(contempt))} classes "
        f"({'with' if contempt else 'without'} contempt); faces kept: {kept}"
    )


__all__ = ["CLASSES", "LABEL_MODES", "VOTE_COLUMNS", "Votes", "check_aligned", "classes", "read_votes", "relabel"]
