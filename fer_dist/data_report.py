"""What a dataset holds, before anyone trains on it: per-split class counts and balance, the
stored images, exact duplicates within and across splits (and those whose labels disagree),
and pictures: a sample grid per class and the class balance.

    python jobs/data.py inspect data/fer2013.csv.gz                 # prints the report
    python jobs/data.py inspect my_faces/ --output reports/my_faces # also report.json and PNGs

`inspect(uri)` reads the data as it is stored (`data.read_splits`: no validation split carved)
and returns a `Report`; `format_report` is its text, `write(report, splits, output)` its files
(report.json, class_balance.png, samples.png). Duplicates are exact (`data.face_keys`: equal
pixels as stored, after decoding to the model's input), so near-duplicates (a shifted or
re-encoded copy) are not found.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter, defaultdict

import numpy as np

from fer_dist import data, storage
from fer_dist.errors import UserError

REPORT_FILE = "report.json"
BALANCE_FILE = "class_balance.png"
SAMPLES_FILE = "samples.png"
SAMPLES_PER_CLASS = 8
SURVEY_FILES = 500  # source images whose size and mode `inspect` reads (a random sample)


@dataclasses.dataclass(frozen=True)
class Duplicates:
    """Groups of identical images (two or more rows with equal pixels), over every split."""

    groups: int  # groups of 2+ identical images
    surplus_rows: int  # rows beyond the first of each group: what removing duplicates would drop
    within: dict[str, int]  # split -> groups with 2+ rows in that split
    across: dict[str, int]  # "val+train" -> groups with rows in both splits
    rows_also_in_train: dict[str, int]  # evaluation split -> its rows whose face is also a training face
    train_rows_also_in_eval: int  # training rows whose face is also a val or test face (dedupe=eval drops them)
    conflicting_labels: int  # groups whose rows do not all have one label
    examples: list[list[dict]]  # a few conflicting groups: split, 0-based index, label (and CSV line) of each


@dataclasses.dataclass(frozen=True)
class Report:
    source: str
    class_names: tuple[str, ...]
    splits: dict[str, dict]  # split -> {rows, counts {class: n}, shares, imbalance, stored}
    duplicates: Duplicates
    notes: tuple[str, ...]
    files: dict | None = None  # the source images' sizes and colour modes (`survey_files`); None for a CSV

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"class_names": list(self.class_names)}


def inspect(uri: str, skip_bad_rows: bool = False, votes: data.VoteLabels | None = None) -> tuple[Report, data.Splits]:
    """The report of the data at `uri` (relabelled by FER+ `votes` when given), and the splits it was made from."""
    splits = data.read_splits(uri, skip_bad_rows=skip_bad_rows, votes=votes)
    names = splits.class_names
    per_split = {name: _split_summary(split, names) for name, split in splits.splits.items()}
    files = survey_files(data.image_files(uri))
    return Report(uri, tuple(names), per_split, find_duplicates(splits.splits), splits.notes, files), splits


def survey_files(paths: list[str], sample: int = SURVEY_FILES, seed: int = 0) -> dict | None:
    """The pixel sizes (width x height) and PIL modes of up to `sample` of the image files, picked
    at random (their headers only; nothing decoded); None without files."""
    from PIL import Image

    if not paths:
        return None
    rng = np.random.default_rng(seed)
    picked = [paths[i] for i in sorted(rng.permutation(len(paths))[:sample])]
    sizes, modes = [], Counter()
    for path in picked:
        try:
            with Image.open(io.BytesIO(storage.read_bytes(path))) as image:
                sizes.append(image.size)
                modes[image.mode] += 1
        except Exception:  # unreadable files are the readers' to report, with their line or path
            modes["unreadable"] += 1
    widths, heights = np.array([w for w, _ in sizes] or [0]), np.array([h for _, h in sizes] or [0])
    return {
        "files": len(paths),
        "surveyed": len(picked),
        "width": {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())},
        "height": {"min": int(heights.min()), "median": float(np.median(heights)), "max": int(heights.max())},
        "modes": dict(modes.most_common()),
    }


def _split_summary(split: data.Split, names: tuple[str, ...]) -> dict:
    counts = data.class_counts(split, len(names))
    present = [c for c in counts if c]
    return {
        "rows": len(split),
        "counts": dict(zip(names, counts)),
        "shares": {n: round(c / max(len(split), 1), 4) for n, c in zip(names, counts)},
        "imbalance": round(max(present) / min(present), 2) if present else None,  # largest / smallest class present
        "missing_classes": [n for n, c in zip(names, counts) if not c],
        "stored": f"{split.images.shape[1]}x{split.images.shape[2]} {data.channels_of(split.images)} uint8",
    }


def find_duplicates(splits: dict[str, data.Split], examples: int = 5) -> Duplicates:
    """Exact duplicates over the splits (see `Duplicates`)."""
    members: dict[bytes, list[tuple[str, int, int]]] = defaultdict(list)  # key -> (split, row, label)
    for name, split in splits.items():
        for row, (key, label) in enumerate(zip(data.face_keys(split.images), split.labels.tolist())):
            members[bytes(key)].append((name, row, label))
    groups = [m for m in members.values() if len(m) > 1]
    within: Counter = Counter()
    across: Counter = Counter()
    also_in_train: Counter = Counter()
    train_in_eval = 0
    conflicting = []
    for group in groups:
        in_split = Counter(s for s, _, _ in group)
        within.update(s for s, n in in_split.items() if n > 1)
        present = sorted(in_split, key=("train", "val", "test").index)
        across.update(f"{a}+{b}" for i, a in enumerate(present) for b in present[i + 1 :])
        if "train" in in_split:
            also_in_train.update({s: n for s, n in in_split.items() if s != "train"})
            if len(in_split) > 1:
                train_in_eval += in_split["train"]
        if len({label for _, _, label in group}) > 1:
            conflicting.append(group)
    shown = [[_member(splits, s, r, label) for s, r, label in group] for group in conflicting[:examples]]
    return Duplicates(
        groups=len(groups),
        surplus_rows=sum(len(g) - 1 for g in groups),
        within=dict(within),
        across=dict(across),
        rows_also_in_train=dict(also_in_train),
        train_rows_also_in_eval=train_in_eval,
        conflicting_labels=len(conflicting),
        examples=shown,
    )


def _member(splits: dict[str, data.Split], name: str, index: int, label: int) -> dict:
    """One face of a duplicate group: its split, index there, label and, for a CSV, its line."""
    member = {"split": name, "index": index, "label": label}
    rows = splits[name].rows
    if rows is not None:
        member["line"] = int(rows[index]) + 2  # the header is line 1
    return member


def format_report(report: Report, split_names: dict[str, str] | None = None) -> str:
    """The report as text: a class table (count and share per split), then the duplicates."""
    names = report.class_names
    splits = list(report.splits)
    lines = [f"{report.source}: {len(names)} classes, " + ", ".join(f"{s} {report.splits[s]['rows']}" for s in splits)]
    width = max(len(n) for n in (*names, "class"))
    lines.append(f"  {'class':<{width}}" + "".join(f"  {s:>15}" for s in splits))
    for name in names:
        cells = [f"{report.splits[s]['counts'][name]:>7} ({report.splits[s]['shares'][name]:6.1%})" for s in splits]
        lines.append(f"  {name:<{width}}" + "".join(f"  {c:>15}" for c in cells))
    for s in splits:
        summary = report.splits[s]
        missing = f"; no {', '.join(summary['missing_classes'])}" if summary["missing_classes"] else ""
        where = (split_names or {}).get(s, s)
        ratio = f"{summary['imbalance']}x" if summary["imbalance"] is not None else "n/a"
        lines.append(f"  {where}: largest/smallest class {ratio}{missing}; stored as {summary['stored']}")
    if report.files:
        f = report.files
        modes = ", ".join(f"{m} {n}" for m, n in f["modes"].items())
        lines.append(
            f"  source images: {f['files']} files; of {f['surveyed']} read: width {f['width']['min']}-"
            f"{f['width']['max']} (median {f['width']['median']:g}), height {f['height']['min']}-"
            f"{f['height']['max']} (median {f['height']['median']:g}); modes {modes}"
        )
    d = report.duplicates
    lines.append(
        f"duplicates (identical pixels): {d.groups} groups, {d.surplus_rows} surplus rows; "
        f"{d.conflicting_labels} groups with conflicting labels"
    )
    named = split_names or {}
    for pair, n in d.across.items():
        a, b = pair.split("+")
        lines.append(f"  {n} groups span {named.get(a, a)} and {named.get(b, b)}")
    for split, n in d.rows_also_in_train.items():
        lines.append(f"  {n} {named.get(split, split + ' rows')} show a face that is also a training face")
    if d.train_rows_also_in_eval:
        lines.append(
            f"  {d.train_rows_also_in_eval} training rows show a face of an evaluation split "
            "(--set dedupe=eval drops them from training)"
        )
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def check_output_free(output: str) -> None:
    """UserError if `output` already holds a report (nothing is overwritten)."""
    if storage.exists(storage.join(output, REPORT_FILE)):
        raise UserError(f"--output {output} already holds a report ({REPORT_FILE}); choose another directory")


def write(report: Report, splits: data.Splits, output: str) -> list[str]:
    """report.json, class_balance.png and samples.png in `output` (local or gs://); refuses an
    `output` that already holds a report. Returns the URIs written."""
    check_output_free(output)
    written = []
    for name, content in (
        (SAMPLES_FILE, sample_grid(splits)),
        (BALANCE_FILE, balance_plot(report)),
    ):
        uri = storage.join(output, name)
        storage.write_bytes(uri, content)
        written.append(uri)
    uri = storage.join(output, REPORT_FILE)
    storage.write_text(uri, json.dumps(report.to_dict(), indent=2) + "\n")  # last: a whole report
    return [*written, uri]


def sample_grid(splits: data.Splits, per_class: int = SAMPLES_PER_CLASS, seed: int = 0) -> bytes:
    """PNG: one row per class, up to `per_class` random faces of it (training split first)."""
    plt = _pyplot()
    which = next(s for s in ("train", "val", "test") if s in splits.splits)
    split = splits.splits[which]
    names = splits.class_names
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(names), per_class, figsize=(1.1 * per_class, 1.15 * len(names)), squeeze=False)
    for label, name in enumerate(names):
        rows = np.flatnonzero(split.labels == label)
        picked = rng.permutation(rows)[:per_class]
        for col, ax in enumerate(axes[label]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(picked):
                ax.imshow(split.images[picked[col]], cmap="gray", vmin=0, vmax=255)
            else:
                ax.axis("off")
        axes[label, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"{splits.source}: random {which} samples of its {len(names)} classes", fontsize=9)
    return _png(fig, plt)


def balance_plot(report: Report) -> bytes:
    """PNG: each class's share of each split, as grouped bars."""
    plt = _pyplot()
    names = report.class_names
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 3.8))
    width = 0.8 / max(len(report.splits), 1)
    for i, (split, summary) in enumerate(report.splits.items()):
        shares = [summary["shares"][n] for n in names]
        ax.bar(np.arange(len(names)) + i * width, shares, width, label=f"{split} ({summary['rows']})")
    ax.set_xticks(np.arange(len(names)) + width * (len(report.splits) - 1) / 2, names, rotation=30, ha="right")
    ax.set_ylabel("share of split")
    ax.set_title(f"class balance: {report.source}", fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig, plt)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, plt) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


__all__ = ["Duplicates", "Report", "check_output_free", "find_duplicates", "format_report", "inspect", "write"]
