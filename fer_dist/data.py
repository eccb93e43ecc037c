"""Data loaders: FER-2013 CSV files, image folders, manifests and the built-in set -> uint8 face
arrays and the class names they are labelled with.

    python jobs/train.py --data data/fer2013.csv --preset seed
    python jobs/train.py --data my_faces/            # my_faces/train/<class>/*.jpg, any class names
    python jobs/train.py --data manifest.csv         # path,label[,split] rows, paths local or gs://

`load(uri)` accepts "builtin", a FER-2013 CSV (`emotion,pixels,Usage`; plain or gzip,
local path or `gs://`), an image folder (`<root>/train/<class>/*.jpg`, as FER-2013 is
downloaded from Kaggle, or any classes of your own) or a manifest CSV (`path,label[,split]`).
Usage `Training`/`PublicTest`/`PrivateTest` (folders `train`/`val`/`test`) become the
train/val/test splits. Without a validation split one is carved from train (stratified,
seeded); without a test split `test` is None. `load` needs a training split; `load_splits`
(for evaluation) does not: a file of PrivateTest rows only, or a folder with only `test/`,
gives just its test split.

Every reader returns its class names (`Dataset.class_names`, label i is class_names[i]):
FER-2013's seven emotions for its CSV, the built-in set, and folders whose class folders are
all FER-2013 emotion names (or their numbers 0-6); otherwise the order a `classes.txt` beside
the data gives (one name per line; the folder's root, or the manifest's directory), else the
names sorted.

Every problem with the input raises `UserError` with one line that names the file, the
1-based physical line for a CSV (header = line 1) and what is wrong. With
`skip_bad_rows=True` bad rows and unreadable images are skipped and reported in
`Dataset.notes` instead; structural problems (missing file or column, empty or non-text
file) are always errors. No TensorFlow here: the tf.data pipeline lives in `pipeline.py`.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer_dist import EMOTIONS, IMAGE_PIXELS, NUM_CLASSES, storage
from fer_dist.errors import UserError

PIXELS = IMAGE_PIXELS * IMAGE_PIXELS
CSV_USAGES = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FOLDER_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CLASSES_FILE = "classes.txt"  # the class order of a folder or manifest: one name per line
SPLIT_NAMES = {**FOLDER_SPLITS, **{k.lower(): v for k, v in CSV_USAGES.items()}}  # a manifest's split column
MAX_LISTED = 10  # skipped rows/images named in a note before "…"
_CHUNK_ROWS = 512  # CSV rows whose pixels are parsed in one vectorised pass
_GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 65536


@dataclass(frozen=True)
class Split:
    """Faces and their labels: images uint8 [N, H, W] grayscale, labels int64 [N] (class
    indices); `targets` float32 [N, K], a distribution over the K classes per face to train on
    instead of its label (FER+ votes, label_mode=probability); `rows` int64 [N], each face's
    data row in a CSV source (0-based, the header not counted)."""

    images: np.ndarray
    labels: np.ndarray
    targets: np.ndarray | None = None
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split | None  # None when the data has no test split
    source: str  # the uri/path, or "builtin"
    notes: tuple[str, ...]  # human-readable lines for the log
    class_names: tuple[str, ...] = EMOTIONS  # label i is class_names[i]

    @property
    def channels(self) -> str:
        """ "gray" ([N, H, W] faces) or "rgb" ([N, H, W, 3])."""
        return channels_of(self.train.images)


@dataclass(frozen=True)
class _Skipped:
    """A bad row or image that was skipped: where (a line number or a relative path) and why."""

    where: str
    message: str


@dataclass(frozen=True)
class _Layout:
    """How a layout names its splits, for notes and errors."""

    train: str
    val: str
    test: str
    unit: str  # "rows" or "images"


_CSV_LAYOUT = _Layout("Training", "PublicTest", "PrivateTest", "rows")
_FOLDER_LAYOUT = _Layout("train/", "val/", "test/", "images")
_MANIFEST_LAYOUT = _Layout("train", "val", "test", "rows")


@dataclass(frozen=True)
class Splits:
    """The splits a data source has, for evaluation (`load_splits`; no training split required)."""

    splits: dict[str, Split]  # "train" | "val" | "test" -> Split, only those present
    source: str
    notes: tuple[str, ...]
    names: dict[str, str]  # each split as the source names it, for messages: {"test": "PrivateTest rows"}
    class_names: tuple[str, ...] = EMOTIONS


# ------------------------------------------------------------------------------
# load
# ------------------------------------------------------------------------------
def load(
    uri: str,
    *,
    skip_bad_rows: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    builtin_size: int = 12000,
    dedupe: str = "none",
    votes: VoteLabels | None = None,
    channels: str = "auto",
) -> Dataset:
    """The train/val/test splits of "builtin", a FER-2013 CSV (.csv/.csv.gz), an image folder or
    a manifest. `dedupe="eval"` drops the training faces identical to a val or test face;
    `votes` relabels a FER-2013 CSV with FER+ votes (`fer_dist/ferplus.py`)."""
    _check_votes_target(uri, votes)
    if uri == "builtin":
        return drop_eval_duplicates(_load_builtin(builtin_size, seed, channels), dedupe)
    read = _read(uri, skip_bad_rows, require_train=True, votes=votes, channels=channels)
    return drop_eval_duplicates(_assemble(uri, read, val_fraction, seed), dedupe)


@dataclass(frozen=True)
class VoteLabels:
    """FER+ votes for a FER-2013 CSV: the votes file, label_mode and whether contempt is a class."""

    uri: str
    label_mode: str = "majority"
    contempt: bool = True


def votes_of(config) -> VoteLabels | None:
    """A TrainConfig's FER+ settings (labels, label_mode, contempt); None without a votes file."""
    return VoteLabels(config.labels, config.label_mode, config.contempt) if config.labels else None


def read_splits(
    uri: str, *, skip_bad_rows: bool = False, builtin_size: int = 12000, seed: int = 0, votes: VoteLabels | None = None
) -> Splits:
    """The splits as the data stores them (none carved), with their class names: what
    `jobs/data.py inspect` reports on."""
    _check_votes_target(uri, votes)
    if uri == "builtin":
        return load_splits(uri, builtin_size=builtin_size, seed=seed)
    read = _read(uri, skip_bad_rows, require_train=False, votes=votes)
    found = {name: read.splits[name] for name in ("train", "val", "test") if name in read.splits}
    notes = read.notes + ((_skipped_note(read.skipped, read.layout.unit),) if read.skipped else ())
    names = {name: f"{getattr(read.layout, name)} {read.layout.unit}" for name in found}
    return Splits(found, uri, notes, names, read.class_names)


def face_keys(images: np.ndarray) -> np.ndarray:
    """One 16-byte digest (BLAKE2b) per image of [N, H, W] uint8: equal keys, identical pixels."""
    import hashlib

    rows = np.ascontiguousarray(images).reshape(len(images), -1)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows], dtype="S16")


def drop_eval_duplicates(dataset: Dataset, dedupe: str) -> Dataset:
    """With dedupe "eval": the dataset without the training faces that are pixel for pixel a val
    or test face (a note gives the counts); "none": unchanged."""
    if dedupe == "none":
        return dataset
    if dedupe != "eval":  # config.DEDUPE_MODES, validated there
        raise ValueError(f"dedupe={dedupe!r}")
    train_keys = face_keys(dataset.train.images)
    held = {"val": dataset.val, "test": dataset.test}
    found = {name: np.isin(train_keys, face_keys(split.images)) for name, split in held.items() if split is not None}
    drop = np.logical_or.reduce(list(found.values())) if found else np.zeros(len(train_keys), bool)
    counts = ", ".join(f"{int(hit.sum())} also in {name}" for name, hit in found.items())
    note = f"dedupe=eval: dropped {int(drop.sum())} of {len(train_keys)} training faces identical to an evaluation face ({counts})"
    train = _subset(dataset.train, ~drop)
    return dataclasses.replace(dataset, train=train, notes=(*dataset.notes, note))


def load_for(config) -> Dataset:
    """`load` with a TrainConfig's data settings (data, skip_bad_rows, val_fraction, seed, builtin_size)."""
    return load(
        config.data,
        skip_bad_rows=config.skip_bad_rows,
        val_fraction=config.val_fraction,
        seed=config.seed,
        builtin_size=config.builtin_size,
        dedupe=config.dedupe,
        votes=votes_of(config),
        channels=config.channels,
    )


@dataclass(frozen=True)
class _Read:
    """What a reader found: the splits present, the rows or images skipped, how the source names
    its splits, the class names, and notes for the log."""

    splits: dict[str, Split]
    skipped: list[_Skipped]
    layout: _Layout
    class_names: tuple[str, ...]
    notes: tuple[str, ...] = ()


def _read(
    uri: str, skip_bad_rows: bool, require_train: bool, votes: VoteLabels | None = None, channels: str = "auto"
) -> _Read:
    """What the reader of a CSV file, a manifest or an image folder found, its faces in
    `channels` (auto: as the data is, gray or RGB; gray; rgb)."""
    read = _read_any(uri, skip_bad_rows, require_train, votes, channels)
    if channels == "rgb" and any(split.images.ndim == 3 for split in read.splits.values()):
        splits = {n: dataclasses.replace(sp, images=gray_to_rgb(sp.images)) for n, sp in read.splits.items()}
        return dataclasses.replace(read, splits=splits)
    return read


def _check_votes_target(uri: str, votes: VoteLabels | None) -> None:
    if votes is not None and (uri == "builtin" or storage.is_dir(uri)):
        raise UserError(f"--labels {votes.uri}: FER+ votes label a FER-2013 CSV; {uri} is not one")


def _read_any(uri: str, skip_bad_rows: bool, require_train: bool, votes: VoteLabels | None, channels: str) -> _Read:
    try:
        is_dir, exists = storage.is_dir(uri), storage.exists(uri)
    except OSError as e:
        raise UserError(f"{uri}: cannot read ({_one_line(e)})") from None
    if not exists:
        raise UserError(f"{uri}: no such file or directory")
    if is_dir:
        splits, skipped, classes = _read_image_folder(uri, skip_bad_rows, require_train, channels)
        return _Read(splits, skipped, _FOLDER_LAYOUT, classes)
    text = _read_text_bytes(uri)
    if _is_manifest(text):
        if votes is not None:
            raise UserError(f"--labels {votes.uri}: FER+ votes label a FER-2013 CSV; {uri} is a manifest")
        splits, skipped, classes = _read_manifest(uri, text, skip_bad_rows, channels)
        return _Read(splits, skipped, _MANIFEST_LAYOUT, classes)
    splits, skipped = _read_csv(uri, skip_bad_rows, text)
    if votes is None:
        return _Read(splits, skipped, _CSV_LAYOUT, EMOTIONS)
    return _with_votes(uri, _Read(splits, skipped, _CSV_LAYOUT, EMOTIONS), votes)


def _with_votes(uri: str, read: _Read, votes: VoteLabels) -> _Read:
    """A FER-2013 CSV's splits relabelled by FER+ votes (`ferplus.relabel`), with a note of the counts."""
    from fer_dist import ferplus

    found = ferplus.read_votes(votes.uri)
    row_splits = {int(row): name for name, split in read.splits.items() for row in split.rows}
    ferplus.check_aligned(found, uri, row_splits, len(row_splits) + len(read.skipped))
    relabelled = {}
    for name, split in read.splits.items():
        keep, labels, targets = ferplus.relabel(
            found.counts[split.rows], votes.label_mode, votes.contempt, train=name == "train"
        )
        relabelled[name] = Split(
            split.images[keep], labels[keep], None if targets is None else targets[keep], split.rows[keep]
        )
    before = {name: len(split) for name, split in read.splits.items()}
    after = {name: len(split) for name, split in relabelled.items()}
    note = ferplus.counts_note(before, after, votes.label_mode, votes.contempt, votes.uri)
    return _Read(relabelled, read.skipped, read.layout, ferplus.classes(votes.contempt), (*read.notes, note))


def load_splits(
    uri: str,
    *,
    skip_bad_rows: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    builtin_size: int = 12000,
    votes: VoteLabels | None = None,
    channels: str = "auto",
) -> Splits:
    """The splits of "builtin", a FER-2013 CSV or an image folder, for evaluation: no training split needed.

    With a training split they are `load`'s (a validation split carved from train the same
    seeded way when there is none); without one, only the splits present (nothing is carved)."""
    _check_votes_target(uri, votes)
    if uri == "builtin":
        dataset = _load_builtin(builtin_size, seed, channels)
        found = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
        return Splits(found, "builtin", dataset.notes, {s: f"built-in {s}" for s in found}, dataset.class_names)
    read = _read(uri, skip_bad_rows, require_train=False, votes=votes, channels=channels)
    if "train" in read.splits:
        dataset = _assemble(uri, read, val_fraction, seed)
        found = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
        notes = dataset.notes
    else:
        found = dict(read.splits)
        notes = read.notes + ((_skipped_note(read.skipped, read.layout.unit),) if read.skipped else ())
    found = {name: found[name] for name in ("train", "val", "test") if found.get(name) is not None}
    names = {name: f"{getattr(read.layout, name)} {read.layout.unit}" for name in found}
    return Splits(found, uri, notes, names, read.class_names)


def _load_builtin(size: int, seed: int, channels: str = "auto") -> Dataset:
    from fer_dist import synthetic

    images, labels = synthetic.generate(size, seed)
    images = gray_to_rgb(images) if channels == "rgb" else images
    rest, test = stratified_split(Split(images, labels), 0.1, seed)
    train, val = stratified_split(rest, 1 / 9, seed)
    note = f"built-in synthetic faces: {size} images split 80/10/10 stratified (seed {seed})"
    return Dataset(train=train, val=val, test=test, source="builtin", notes=(note,))


def _assemble(uri: str, read: _Read, val_fraction: float, seed: int) -> Dataset:
    """Checks the splits found, carves a validation split if needed and writes the notes."""
    splits, skipped, layout = read.splits, read.skipped, read.layout
    if "train" not in splits:
        found = ", ".join(getattr(layout, name) for name in splits) or "none"
        raise UserError(f"{uri}: no {layout.train} {layout.unit} (found: {found}); a training split is required")
    notes = list(read.notes)
    train, val = splits["train"], splits.get("val")
    if val is None:
        train, val = stratified_split(train, val_fraction, seed)
        if len(val) == 0:
            raise UserError(
                f"{uri}: only {len(train)} {layout.train} {layout.unit}, too few to carve a validation split"
            )
        notes.append(
            f"no {layout.val}: carved a stratified {val_fraction * 100:g}% validation split "
            f"from {layout.train} (seed {seed})"
        )
    test = splits.get("test")
    if test is None:
        notes.append(f"no {layout.test}: no test split, no test metrics")
    if skipped:
        notes.append(_skipped_note(skipped, layout.unit))
    return Dataset(train=train, val=val, test=test, source=uri, notes=tuple(notes), class_names=read.class_names)


def check_classes(class_names: tuple[str, ...], dataset: Dataset | Splits, what: str = "the run") -> tuple[str, ...]:
    """The data's class names, when `class_names` (a run's, or () for any) agrees with them by
    name and order; else a UserError naming both lists."""
    if class_names and tuple(class_names) != tuple(dataset.class_names):
        raise UserError(
            f"{dataset.source}: its classes ({', '.join(dataset.class_names)}) differ from those of {what} "
            f"({', '.join(class_names)})"
        )
    return tuple(dataset.class_names)


def as_classes(splits: Splits, class_names: tuple[str, ...], what: str = "the run") -> Splits:
    """The splits labelled by `class_names`: unchanged when they are the data's; relabelled by
    name when the data's classes are some of them (an evaluation set that lacks a class and has
    no classes.txt); else `check_classes`' error."""
    if tuple(splits.class_names) == tuple(class_names) or not set(splits.class_names) <= set(class_names):
        check_classes(class_names, splits, what)
        return splits
    index = np.array([class_names.index(name) for name in splits.class_names], dtype=np.int64)
    relabelled = {n: dataclasses.replace(sp, labels=index[sp.labels]) for n, sp in splits.splits.items()}
    return dataclasses.replace(splits, splits=relabelled, class_names=tuple(class_names))


def _skipped_note(skipped: list[_Skipped], unit: str) -> str:
    places = [s.where for s in skipped[:MAX_LISTED]] + (["…"] if len(skipped) > MAX_LISTED else [])
    prefix = "lines " if unit == "rows" else ""
    return f"skipped {len(skipped)} bad {unit}: {prefix}{', '.join(places)} (first: {skipped[0].message})"


# ------------------------------------------------------------------------------
# splitting and counting
# ------------------------------------------------------------------------------
def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, carved): `fraction` of the rows (at least 1, at most all but 1) carved per class.

    Each class gives floor(fraction * its count) rows, and the rounding remainder goes to the
    classes with the largest fractional parts, so the classes keep their proportions and the
    carved size is round(fraction * N). Deterministic for a seed; both parts keep row order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction}: must be in (0, 1)")
    n = len(split)
    total = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
    counts = np.bincount(split.labels) if n else np.zeros(0, np.int64)
    exact = fraction * counts
    take = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - take), kind="stable")
    take[by_remainder[: max(total - int(take.sum()), 0)]] += 1
    rng = np.random.default_rng(seed)
    carved = np.zeros(n, dtype=bool)
    for label, k in enumerate(take):
        members = np.flatnonzero(split.labels == label)
        carved[rng.permutation(members)[:k]] = True
    return _subset(split, ~carved), _subset(split, carved)


def _subset(split: Split, mask: np.ndarray) -> Split:
    def part(a):
        return None if a is None else a[mask]

    return Split(split.images[mask], split.labels[mask], part(split.targets), part(split.rows))


def class_counts(split: Split, num_classes: int = NUM_CLASSES) -> list[int]:
    """Rows per class, in class order (FER-2013's seven unless `num_classes` says otherwise)."""
    return np.bincount(split.labels, minlength=num_classes).tolist()


# ------------------------------------------------------------------------------
# FER-2013 CSV
# ------------------------------------------------------------------------------
class _RowError(Exception):
    """What is wrong with one CSV row: the message after `<file> line N: `."""


def read_csv(uri: str, *, skip_bad_rows: bool = False) -> tuple[dict[str, Split], list[str]]:
    """A FER-2013 CSV -> ({"train"|"val"|"test": Split}, messages of the skipped rows)."""
    splits, skipped = _read_csv(uri, skip_bad_rows)
    return splits, [s.message for s in skipped]


def _read_csv(uri: str, skip_bad_rows: bool, text: bytes | None = None) -> tuple[dict[str, Split], list[_Skipped]]:
    lines = (text if text is not None else _read_text_bytes(uri)).split(b"\n")
    columns = _header_columns(uri, lines[0])
    rows = [(lineno, line) for lineno, line in enumerate(lines[1:], start=2) if line and not line.isspace()]
    if not rows:
        raise UserError(f"{uri}: no data rows (only a header)")
    skipped: list[_Skipped] = []
    per_split: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for start in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[start : start + _CHUNK_ROWS]
        for split, images, labels, indices in _parse_chunk(uri, chunk, columns, skip_bad_rows, skipped, start):
            per_split.setdefault(split, []).append((images, labels, indices))
    if not per_split:
        raise UserError(f"{uri}: every data row is bad ({len(skipped)} rows; first: {skipped[0].message})")
    return {split: _concat(parts) for split, parts in per_split.items()}, skipped


def _concat(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Split:
    images = np.concatenate([p[0] for p in parts]).reshape(-1, IMAGE_PIXELS, IMAGE_PIXELS)
    return Split(images, np.concatenate([p[1] for p in parts]), rows=np.concatenate([p[2] for p in parts]))


def _read_text_bytes(uri: str) -> bytes:
    """The file's bytes, gunzipped if gzip (by magic bytes); errors unless it looks like text."""
    try:
        with storage.open_read(uri) as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"{uri}: no such file or directory") from None
    except OSError as e:
        raise UserError(f"{uri}: cannot read ({_one_line(e)})") from None
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{uri}: not a CSV text file (corrupt gzip data: {_one_line(e)})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    if not data or data.isspace():
        raise UserError(f"{uri}: empty file")
    if not _looks_like_text(data[:_SNIFF_BYTES]):
        raise UserError(f"{uri}: not a CSV text file (binary data)")
    return data


def _looks_like_text(head: bytes) -> bool:
    """No NUL bytes and valid UTF-8 (a multi-byte character may be cut at the end of `head`)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return len(head) == _SNIFF_BYTES and e.start >= len(head) - 3
    return True


def _fields(line: bytes) -> list[bytes]:
    if b'"' in line:
        return [f.encode("utf-8") for f in next(csv.reader([line.decode("utf-8", errors="replace")]))]
    return line.split(b",")


@dataclass(frozen=True)
class _Columns:
    count: int  # fields in the header
    emotion: int
    pixels: int
    usage: int | None  # without a Usage column every row is Training


def _header_columns(uri: str, header: bytes) -> _Columns:
    """Where emotion, pixels and Usage are (names matched without case); other columns are ignored."""
    names = [_show(f).strip() for f in _fields(header.rstrip(b"\r"))]
    index = {name.lower(): i for i, name in reversed(list(enumerate(names)))}
    for required in ("emotion", "pixels"):
        if required not in index:
            shown = ", ".join(names[:MAX_LISTED]) + (", …" if len(names) > MAX_LISTED else "")
            raise UserError(f"{uri} line 1: missing column {required!r} (header has: {shown[:200]})")
    return _Columns(len(names), index["emotion"], index["pixels"], index.get("usage"))


def _parse_chunk(
    uri: str, chunk: list[tuple[int, bytes]], columns: _Columns, skip: bool, skipped: list[_Skipped], first: int = 0
) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Parses up to _CHUNK_ROWS (line number, line) rows, the data rows `first`, `first + 1`, ...
    -> (split, images [n, PIXELS], labels, data row indices) per split.

    Bad rows raise, or are appended to `skipped`, in line order."""
    rows = [_fields(line.rstrip(b"\r")) for _, line in chunk]
    metas = [_row_meta(fields, columns) for fields in rows]
    pixel_fields = [fields[columns.pixels] if isinstance(meta, tuple) else b"" for fields, meta in zip(rows, metas)]
    fast, ok = _parse_pixels_fast(pixel_fields)
    images = np.empty((len(chunk), PIXELS), dtype=np.uint8)
    images[ok] = fast
    good = np.zeros(len(chunk), dtype=bool)
    for i, ((lineno, _), meta) in enumerate(zip(chunk, metas)):
        try:
            if isinstance(meta, str):
                raise _RowError(meta)
            if not ok[i]:
                images[i] = _parse_pixels_slow(pixel_fields[i])
        except _RowError as e:
            message = f"{uri} line {lineno}: {e}"
            if not skip:
                raise UserError(message) from None
            skipped.append(_Skipped(str(lineno), message))
            continue
        good[i] = True
    splits = np.array([meta[0] if isinstance(meta, tuple) else "" for meta in metas])
    labels = np.array([meta[1] if isinstance(meta, tuple) else -1 for meta in metas], dtype=np.int64)
    indices = np.arange(first, first + len(chunk), dtype=np.int64)
    return [
        (split, images[mask], labels[mask], indices[mask])
        for split in ("train", "val", "test")
        if (mask := good & (splits == split)).any()
    ]


def _row_meta(fields: list[bytes], columns: _Columns) -> tuple[str, int] | str:
    """(split, label) of a row, or what is wrong with its field count, emotion or Usage."""
    if len(fields) != columns.count:
        return f"expected {columns.count} comma-separated fields, got {len(fields)}"
    raw_label = fields[columns.emotion].strip()
    try:
        label = int(raw_label)
    except ValueError:
        return f"emotion {_show(raw_label)!r} is not an integer 0-{NUM_CLASSES - 1}"
    if not 0 <= label < NUM_CLASSES:
        return f"emotion {label} is outside 0-{NUM_CLASSES - 1}"
    if columns.usage is None:
        return "train", label
    usage = _show(fields[columns.usage].strip())
    if usage not in CSV_USAGES:
        return f"Usage {usage!r} is not one of {', '.join(CSV_USAGES)}"
    return CSV_USAGES[usage], label


def _show(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _parse_pixels_fast(fields: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised parse of the rows that are plainly good: (pixels uint8 [k, PIXELS], ok bool [n]).

    A row is ok when it holds exactly PIXELS space-separated tokens of 1-3 ASCII digits, each
    <= 255. The other rows (ok False) go to `_parse_pixels_slow`, which accepts or explains them."""
    n = len(fields)
    joined = b"\n".join(fields) + b"\n"
    blob = np.frombuffer(joined, dtype=np.uint8)
    row_ends = np.cumsum(np.fromiter(map(len, fields), dtype=np.int64, count=n) + 1) - 1  # each row's "\n"
    digit = blob - np.uint8(ord("0"))
    is_digit = digit < 10
    digit *= is_digit  # 0 at separators
    ends = np.flatnonzero(is_digit[:-1] & ~is_digit[1:])  # last digit of each token
    # value of the up-to-3-digit token ending at each byte: d[i] + 10 d[i-1] + 100 d[i-2]
    value = digit.astype(np.uint16)
    value[1:] += digit[:-1] * np.uint16(10)
    value[2:] += (digit[:-2] * is_digit[1:-1]) * np.uint16(100)
    values = value[ends]
    counts = np.diff(np.searchsorted(ends, row_ends), prepend=0)
    bad = counts != PIXELS
    if joined.translate(None, b"0123456789 \n"):  # other characters
        bad[np.searchsorted(row_ends, np.flatnonzero(~is_digit & (blob != ord(" ")) & (blob != ord("\n"))))] = True
    long_runs = is_digit[:-3] & is_digit[1:-2] & is_digit[2:-1] & is_digit[3:]  # tokens of > 3 digits
    if long_runs.any():
        bad[np.searchsorted(row_ends, np.flatnonzero(long_runs))] = True
    bad[np.searchsorted(row_ends, ends[values > 255])] = True
    if bad.any():
        values = values[np.repeat(~bad, counts)]
    return values.astype(np.uint8).reshape(-1, PIXELS), ~bad


def _parse_pixels_slow(field: bytes) -> np.ndarray:
    """One row's pixels, or a _RowError saying which pixel (1-based) is wrong."""
    tokens = field.split()
    if len(tokens) != PIXELS:
        raise _RowError(f"expected {PIXELS} pixels, got {len(tokens)}")
    pixels = np.empty(PIXELS, dtype=np.uint8)
    for i, token in enumerate(tokens):
        try:
            value = int(token)
        except ValueError:
            raise _RowError(f"pixel {i + 1} is {_show(token)!r}, not an integer") from None
        if not 0 <= value <= 255:
            raise _RowError(f"pixel {i + 1} is {value}, outside 0-255")
        pixels[i] = value
    return pixels


# ------------------------------------------------------------------------------
# image folders
# ------------------------------------------------------------------------------
def read_image_folder(uri: str, *, skip_bad_rows: bool = False) -> tuple[dict[str, Split], list[str]]:
    """`<root>/{train,val|validation,test}/<class>/*.jpg|jpeg|png` -> ({split: Split}, skipped messages)."""
    splits, skipped, _ = _read_image_folder(uri, skip_bad_rows)
    return splits, [s.message for s in skipped]


def _read_image_folder(
    uri: str, skip_bad_rows: bool, require_train: bool = True, channels: str = "auto"
) -> tuple[dict[str, Split], list[_Skipped], tuple[str, ...]]:
    split_dirs = _split_dirs(uri, require_train)
    folders = {name: _class_folders(uri, name) for name in split_dirs.values()}
    classes, label_of = _folder_classes(uri, folders)
    files: list[tuple[str, str, int]] = []  # (split, relative path, label)
    for split, name in split_dirs.items():
        for folder in folders[name]:
            entries = _visible(storage.listdir(storage.join(uri, name, folder)))
            files += [(split, f"{name}/{folder}/{f}", label_of[folder]) for f in entries]
    splits, skipped = _decode_files(uri, files, skip_bad_rows, lambda rel: storage.join(uri, rel), channels=channels)
    return splits, skipped, classes


def _decode_files(
    uri: str, files: list[tuple[str, str, int]], skip_bad_rows: bool, locate, name=None, channels: str = "auto"
) -> tuple:
    """({split: Split}, skipped) of (split, where, label) image files, decoded in parallel threads;
    `locate(where)` is the file's URI, `name(where)` how messages name it (default: its URI).
    With channels "auto" every face is RGB when one of them has colour."""
    name = name or locate
    with ThreadPoolExecutor(max_workers=8) as pool:
        decoded = list(pool.map(lambda f: decode_image(locate(f[1]), channels), files))
    if channels == "auto" and any(isinstance(d, np.ndarray) and d.ndim == 3 for d in decoded):
        decoded = [gray_to_rgb(d[np.newaxis])[0] if isinstance(d, np.ndarray) and d.ndim == 2 else d for d in decoded]
    per_split: dict[str, tuple[list[np.ndarray], list[int]]] = {}
    skipped: list[_Skipped] = []
    for (split, where, label), image in zip(files, decoded):
        if isinstance(image, str):
            message = f"{name(where)}: {image}"
            if not skip_bad_rows:
                raise UserError(message)
            skipped.append(_Skipped(where, message))
            continue
        images, labels = per_split.setdefault(split, ([], []))
        images.append(image)
        labels.append(label)
    if not per_split:
        if skipped:
            raise UserError(f"{uri}: every image is bad ({len(skipped)} images; first: {skipped[0].message})")
        raise UserError(f"{uri}: no images")
    splits = {s: Split(np.stack(images), np.array(labels, dtype=np.int64)) for s, (images, labels) in per_split.items()}
    return splits, skipped


def _class_folders(uri: str, split_folder: str) -> list[str]:
    """The class folders under a split folder; a file among them is an error (not a class)."""
    names = _visible(storage.listdir(storage.join(uri, split_folder)))
    for name in names:
        if not storage.is_dir(storage.join(uri, split_folder, name)):
            raise UserError(
                f"{storage.join(uri, split_folder, name)}: a file where class folders are expected "
                f"({uri}/{split_folder}/<class>/*.jpg); move it out"
            )
    return names


def _folder_classes(uri: str, folders: dict[str, list[str]]) -> tuple[tuple[str, ...], dict[str, int]]:
    """(class names, {class folder: label}) of the class folders under each split folder."""
    names = sorted({name for names in folders.values() for name in names})
    listed = read_class_list(storage.join(uri, CLASSES_FILE))
    if listed is not None:
        index = {name: i for i, name in enumerate(listed)}
        for split, found in folders.items():
            for name in found:
                if name not in index:
                    raise UserError(
                        f"{storage.join(uri, split, name)}: class folder {name!r} is not listed in "
                        f"{storage.join(uri, CLASSES_FILE)} ({_listing(listed)})"
                    )
        return listed, {name: index[name] for name in names}
    if names and all(_fer_label(name) is not None for name in names):  # FER-2013 as Kaggle ships it
        return EMOTIONS, {name: _fer_label(name) for name in names}
    _check_classes(uri, names)
    return tuple(names), {name: i for i, name in enumerate(names)}


def _fer_label(name: str) -> int | None:
    """FER-2013's label of a class folder named after its emotion (any case) or its number 0-6."""
    key = name.lower()
    if key in EMOTIONS:
        return EMOTIONS.index(key)
    return int(key) if key.isdigit() and int(key) < NUM_CLASSES else None


def _check_classes(where: str, names: list[str] | tuple[str, ...]) -> None:
    if len(names) < 2:
        raise UserError(f"{where}: {len(names)} class(es) ({_listing(names)}); a classifier needs at least 2")


def _listing(names) -> str:
    names = list(names)
    return ", ".join(names[:MAX_LISTED]) + (f", … ({len(names)} in all)" if len(names) > MAX_LISTED else "")


def read_class_list(uri: str) -> tuple[str, ...] | None:
    """The class names of a `classes.txt` (one per line; blank lines and `#` comments ignored),
    None when there is none; UserError naming the line of a repeated name."""
    try:
        if not storage.exists(uri):
            return None
        text = storage.read_text(uri)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{uri}: cannot read ({_one_line(e)})") from None
    names: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name in names:
            raise UserError(f"{uri} line {lineno}: class {name!r} is listed twice")
        if "," in name:
            raise UserError(f"{uri} line {lineno}: class {name!r}: a class name holds no comma")
        names.append(name)
    _check_classes(uri, names)
    return tuple(names)


# ------------------------------------------------------------------------------
# manifests: path,label[,split]
# ------------------------------------------------------------------------------
def _is_manifest(text: bytes) -> bool:
    """Whether a CSV's header (its first line) names `path` and `label` columns, not `pixels`."""
    header = text[: text.find(b"\n")] if b"\n" in text else text
    names = {_show(f).strip().lower() for f in _fields(header.rstrip(b"\r"))}
    return {"path", "label"} <= names and "pixels" not in names


def _read_manifest(uri: str, text: bytes, skip_bad_rows: bool, channels: str = "auto") -> tuple:
    """A manifest CSV (`path,label[,split]`; paths absolute, gs://, or relative to the manifest)
    -> (splits, skipped, class names). Splits are train/val/test (or FER-2013's Usage names);
    without a split column every row is train."""
    entries, base = _manifest_entries(uri, text)
    classes = _manifest_classes(uri, base, entries)
    index = {name: i for i, name in enumerate(classes)}
    files = [(split, str(lineno), index[label]) for lineno, split, _, label in entries]
    where = {str(lineno): path for lineno, _, path, _ in entries}
    splits, skipped = _decode_files(
        uri,
        files,
        skip_bad_rows,
        lambda line: where[line],
        lambda line: f"{uri} line {line}: {where[line]}",
        channels,
    )
    return splits, skipped, classes


def image_files(uri: str) -> list[str]:
    """The image files of an image folder or a manifest, as URIs ([] for a CSV of pixels or
    builtin): what `jobs/data.py inspect` surveys."""
    if uri == "builtin":
        return []
    if storage.is_dir(uri):
        return [storage.join(uri, rel) for rel in storage.walk_files(uri) if rel.lower().endswith(IMAGE_SUFFIXES)]
    text = _read_text_bytes(uri)
    if not _is_manifest(text):
        return []
    return [path for _, _, path, _ in _manifest_entries(uri, text)[0]]


def _manifest_entries(uri: str, text: bytes) -> tuple[list[tuple[int, str, str, str]], str]:
    """((line, split, path URI, label) of each row, the manifest's directory); UserError naming a bad row."""
    try:
        rows = list(csv.reader(io.StringIO(text.decode("utf-8"))))
    except UnicodeDecodeError as e:
        line = text[: e.start].count(b"\n") + 1
        raise UserError(f"{uri} line {line}: not UTF-8 text") from None
    except csv.Error as e:
        raise UserError(f"{uri}: not a readable CSV ({_one_line(e)})") from None
    header = [name.strip().lower() for name in rows[0]]
    column = {name: i for i, name in reversed(list(enumerate(header)))}
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    entries: list[tuple[int, str, str, str]] = []  # (line, split, path, label)
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(header):
            raise UserError(f"{uri} line {lineno}: expected {len(header)} comma-separated fields, got {len(row)}")
        path, label = row[column["path"]].strip(), row[column["label"]].strip()
        split = row[column["split"]].strip() if "split" in column else "train"
        if not path or not label:
            raise UserError(f"{uri} line {lineno}: empty {'path' if not path else 'label'}")
        if split.lower() not in SPLIT_NAMES:
            raise UserError(f"{uri} line {lineno}: split {split!r} is not one of train, val, test")
        located = path if "://" in path or path.startswith("/") else storage.join(base, path)
        entries.append((lineno, SPLIT_NAMES[split.lower()], located, label))
    if not entries:
        raise UserError(f"{uri}: no data rows (only a header)")
    return entries, base


def _manifest_classes(uri: str, base: str, entries: list) -> tuple[str, ...]:
    labels = sorted({label for *_, label in entries})
    listed = read_class_list(storage.join(base, CLASSES_FILE))
    if listed is None:
        _check_classes(uri, labels)
        return tuple(labels)
    for lineno, _, _, label in entries:
        if label not in listed:
            raise UserError(
                f"{uri} line {lineno}: label {label!r} is not listed in {storage.join(base, CLASSES_FILE)} "
                f"({_listing(listed)})"
            )
    return listed


def _visible(names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith(".")]


def _split_dirs(uri: str, require_train: bool = True) -> dict[str, str]:
    """{split: folder name} of the split folders under the root; train/ is required (or any one without it)."""
    names = _visible(storage.listdir(uri))
    found: dict[str, str] = {}
    for name in names:
        split = FOLDER_SPLITS.get(name.lower())
        if split is None:
            continue
        if split in found:
            raise UserError(f"{uri}: both {found[split]}/ and {name}/ are there; keep one {split} folder")
        found[split] = name
    if not found and not require_train:
        raise UserError(
            f"{uri}: no train/, val/ or test/ folder (has: {', '.join(names[:MAX_LISTED]) or 'nothing'}); "
            f"expected {uri}/test/<class>/*.jpg"
        )
    if "train" not in found and require_train:
        raise UserError(
            f"{uri}: no train/ folder (has: {', '.join(names[:MAX_LISTED]) or 'nothing'}); "
            f"expected {uri}/train/<class>/*.jpg"
        )
    return found


def open_image(uri: str) -> Image.Image | str:
    """The decoded image (any size, mode as stored), or what is wrong with the file."""
    if not uri.lower().endswith(IMAGE_SUFFIXES):
        return f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})"
    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as image:
            image.load()
            return image
    except UnidentifiedImageError:
        return "not a readable image (unknown format or corrupt data)"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"not a readable image ({_one_line(e)})"


def face_pixels(image: Image.Image, box: tuple[int, int, int, int] | None = None, channels: str = "gray") -> np.ndarray:
    """The model's input spec, shared by training folders, predict and (in TensorFlow) the
    SavedModel: the box (x, y, width, height; pixels outside the image are black) or the whole
    image, converted to 8-bit gray (ITU-R 601-2 luma, PIL's "L") or, with channels "rgb", to
    PIL's "RGB" (alpha dropped), resized to 48x48 with PIL's bilinear filter when it is another
    size: uint8 [48, 48] gray or [48, 48, 3] RGB."""
    if box is not None:
        x, y, w, h = box
        if image.mode not in ("L", "RGB", "RGBA"):  # outside the image is 0: black only in these modes
            image = image.convert("RGB")
        image = image.crop((x, y, x + w, y + h))
    face = image.convert("RGB" if channels == "rgb" else "L")
    if face.size != (IMAGE_PIXELS, IMAGE_PIXELS):
        face = face.resize((IMAGE_PIXELS, IMAGE_PIXELS), Image.Resampling.BILINEAR)
    return np.asarray(face, dtype=np.uint8)


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes without colour


def decode_image(uri: str, channels: str = "gray") -> np.ndarray | str:
    """A uint8 face (`face_pixels` of the whole image), or what is wrong with the file. channels
    "gray" or "rgb": that; "auto": RGB when the image has colour (a colour mode whose pixels
    are not all R = G = B), else gray."""
    image = open_image(uri)
    if isinstance(image, str):
        return image
    if channels != "auto":
        return face_pixels(image, channels=channels)
    if image.mode in GRAY_MODES:
        return face_pixels(image)
    rgb = face_pixels(image, channels="rgb")
    gray = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0].copy() if gray else rgb  # PIL's "L" of an R = G = B pixel is that value


def gray_to_rgb(images: np.ndarray) -> np.ndarray:
    """[N, H, W] gray -> [N, H, W, 3] (R = G = B, as PIL's "RGB" of an "L" image)."""
    return np.repeat(images[..., np.newaxis], 3, axis=-1)


def channels_of(images: np.ndarray) -> str:
    """ "rgb" for [N, H, W, 3] faces, "gray" for [N, H, W]."""
    return "rgb" if images.ndim == 4 else "gray"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
