"""Scores a trained run: metrics, reports, confusion matrices and plots.

    python jobs/evaluate.py RUN_DIR --data PATH

This part is model-independent (numpy, pandas and matplotlib only): it turns true labels
and predicted class probabilities into a JSON-able metrics dict (`compute_metrics`), a
terminal report (`format_report`), a confusion-matrix CSV + PNG (`write_confusion`),
training curves from a run's `history.csv` (`write_history_plot`), an ensemble of several
models' probabilities (`average_probs`) and a grid of the most confident mistakes
(`mistakes_grid`). Every file goes through `fer_dist.storage`, so `RUN_DIR` may be a
local directory or a `gs://` prefix.

Macro averages (F1, precision, recall) are taken over the classes that occur in the
labels or in the predictions, as scikit-learn does; a class that is in neither has no
bearing on them. Per-class precision/recall/F1 are 0 where undefined (no support or no
predictions).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import sys
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fer_dist import EMOTIONS, storage  # noqa: E402
from fer_dist.config import TTA_MODES  # noqa: E402
from fer_dist.errors import UserError  # noqa: E402
from fer_dist.inference import check_tta, load_config, load_run, predict_probs  # noqa: E402
from fer_dist.reporting import METRICS_FILE  # noqa: E402  (written last: marks a run complete)

HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
_TABLE_COLUMNS = ("precision", "recall", "f1", "support")
_MACRO_ROW = "macro avg"


# --- metrics -------------------------------------------------------------------------


def _check_predictions(labels: np.ndarray, probs: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels as int64 [N], probs as float64 [N, classes]); UserError if they do not fit."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != classes:
        raise UserError(f"probabilities must have shape [N, {classes}], got {list(probs.shape)}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise UserError(f"labels must have shape [{len(probs)}] to match the probabilities, got {list(labels.shape)}")
    if len(labels) == 0:
        raise UserError("no examples to evaluate")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= classes:
        raise UserError(f"labels must lie in 0..{classes - 1}, got {labels.min()}..{labels.max()}")
    if not np.isfinite(probs).all():
        raise UserError("probabilities contain NaN or infinity")
    return labels.astype(np.int64), probs


def _confusion(labels: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """[classes, classes] counts, rows = true class, columns = predicted class."""
    flat = np.bincount(labels * classes + preds, minlength=classes * classes)
    return flat.reshape(classes, classes)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0 (no warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def compute_metrics(labels: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...] = EMOTIONS) -> dict:
    """Accuracy, macro scores, per-class scores and the confusion matrix, as plain Python types.

    labels: int [N] in 0..K-1 of the K `class_names` (FER-2013's seven by default); probs:
    float [N, K] (only the argmax of each row matters). Keys: accuracy, macro_f1,
    macro_precision, macro_recall, n, per_class ({class: {precision, recall, f1, support}},
    in class order) and confusion_matrix (KxK list of ints, rows = true, columns = predicted).
    """
    labels, probs = _check_predictions(labels, probs, len(class_names))
    cm = _confusion(labels, probs.argmax(axis=1), len(class_names))
    true_pos = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_ratio(true_pos, predicted)
    recall = _safe_ratio(true_pos, support)
    f1 = _safe_ratio(2 * precision * recall, precision + recall)
    seen = (support > 0) | (predicted > 0)
    return {
        "accuracy": float(true_pos.sum() / len(labels)),
        "macro_f1": float(f1[seen].mean()),
        "macro_precision": float(precision[seen].mean()),
        "macro_recall": float(recall[seen].mean()),
        "n": int(len(labels)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.astype(int).tolist(),
    }


def class_names_of(metrics: dict) -> list[str]:
    """The class names of `compute_metrics`' output, in class order."""
    return list(metrics["per_class"])


def per_class_table(metrics: dict) -> pd.DataFrame:
    """One row per class plus a "macro avg" row; columns precision, recall, f1, support."""
    table = pd.DataFrame.from_dict(metrics["per_class"], orient="index").reindex(columns=list(_TABLE_COLUMNS))
    table.loc[_MACRO_ROW] = [metrics["macro_precision"], metrics["macro_recall"], metrics["macro_f1"], metrics["n"]]
    table["support"] = table["support"].astype(int)
    return table


def format_report(metrics: dict, title: str) -> str:
    """A plain-text report for the terminal: title, accuracy, macro-F1, per-class table."""
    table = per_class_table(metrics).to_string(float_format=lambda x: f"{x:.3f}")
    return (
        f"{title}\n{'=' * len(title)}\n"
        f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   n {metrics['n']}\n\n"
        f"{table}\n"
    )


# --- files and figures ---------------------------------------------------------------


def _png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _confusion_frame(metrics: dict) -> pd.DataFrame:
    names = class_names_of(metrics)
    frame = pd.DataFrame(metrics["confusion_matrix"], index=names, columns=names)
    frame.index.name = "true"
    return frame


def _confusion_png(metrics: dict, prefix: str) -> bytes:
    """Counts in each cell, cells coloured by the row-normalised share (recall on the diagonal)."""
    cm = np.asarray(metrics["confusion_matrix"])
    shares = _safe_ratio(cm, cm.sum(axis=1, keepdims=True))
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    for (row, col), count in np.ndenumerate(cm):
        colour = "white" if shares[row, col] > 0.5 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=9)
    names = class_names_of(metrics)
    recalls = [metrics["per_class"][name]["recall"] for name in names]
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), [f"{name} ({r:.2f})" for name, r in zip(names, recalls)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (recall)")
    ax.set_title(f"{prefix}: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, n {metrics['n']}")
    return _png(fig)


def write_confusion(run_dir: str, metrics: dict, prefix: str) -> list[str]:
    """Writes <prefix>_confusion.csv and <prefix>_confusion.png into run_dir; returns their URIs.

    The CSV reads back with `pd.read_csv(uri, index_col=0)`: columns = predicted emotions,
    index (named "true") = true emotions.
    """
    csv_uri = storage.join(run_dir, f"{prefix}_confusion.csv")
    png_uri = storage.join(run_dir, f"{prefix}_confusion.png")
    storage.write_text(csv_uri, _confusion_frame(metrics).to_csv())
    storage.write_bytes(png_uri, _confusion_png(metrics, prefix))
    return [csv_uri, png_uri]


# --- training curves -----------------------------------------------------------------


def _parse_history(history_csv_text: str) -> pd.DataFrame:
    """history.csv text -> DataFrame; UserError if it is not a CSV with an `epoch` column."""
    try:
        history = pd.read_csv(io.StringIO(history_csv_text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{HISTORY_FILE} is not a readable CSV: {exc}") from exc
    if "epoch" not in history.columns:
        raise UserError(f"{HISTORY_FILE} has no 'epoch' column (columns: {', '.join(map(str, history.columns))})")
    return history


def _plot_series(ax: plt.Axes, history: pd.DataFrame, columns: tuple[str, ...], title: str) -> None:
    for column in columns:
        if column in history.columns:
            ax.plot(history["epoch"], history[column], marker="o", markersize=3, label=column)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend()


def _history_png(history: pd.DataFrame) -> bytes:
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4))
    _plot_series(loss_ax, history, ("loss", "val_loss"), "loss")
    _plot_series(acc_ax, history, ("accuracy", "val_accuracy"), "accuracy")
    _plot_series(lr_ax, history, ("learning_rate",), "learning rate")
    if "learning_rate" in history.columns and (history["learning_rate"] > 0).all():
        lr_ax.set_yscale("log")
    return _png(fig)


def plot_history(history_csv_text: str) -> bytes:
    """PNG bytes of three panels: loss (train/val), accuracy (train/val), learning rate (log y).

    Columns missing from the CSV are left out of their panel; a CSV with no rows is a UserError.
    """
    history = _parse_history(history_csv_text)
    if history.empty:
        raise UserError(f"{HISTORY_FILE} has no epochs to plot")
    return _history_png(history)


def write_history_plot(run_dir: str) -> str | None:
    """Plots <run_dir>/history.csv into <run_dir>/curves.png; its URI, or None without history."""
    history_uri = storage.join(run_dir, HISTORY_FILE)
    if not storage.exists(history_uri):
        return None
    history = _parse_history(storage.read_text(history_uri))
    if history.empty:
        return None
    curves_uri = storage.join(run_dir, CURVES_FILE)
    storage.write_bytes(curves_uri, _history_png(history))
    return curves_uri


# --- ensembles and mistakes ----------------------------------------------------------


def average_probs(prob_list: list[np.ndarray]) -> np.ndarray:
    """The ensemble's probabilities: the elementwise mean of each model's [N, classes] array."""
    if not prob_list:
        raise UserError("no models' probabilities to average")
    arrays = [np.asarray(p, dtype=np.float64) for p in prob_list]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise UserError(f"models' probabilities differ in shape: {sorted(map(list, shapes))}")
    if arrays[0].ndim != 2:
        raise UserError(f"probabilities must have shape [N, classes], got {list(arrays[0].shape)}")
    return np.mean(np.stack(arrays), axis=0)


def _most_confident_mistakes(labels: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of at most k wrong predictions, most confident (highest predicted probability) first."""
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != labels)
    confidence = probs[wrong, preds[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:k]]


def _gray_images(images: np.ndarray, n: int) -> np.ndarray:
    """[N, H, W] gray (a trailing channel axis of 1 is dropped) or [N, H, W, 3] RGB; UserError otherwise."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)) or len(images) != n:
        raise UserError(f"images must have shape [{n}, H, W] or [{n}, H, W, 3], got {list(images.shape)}")
    return images


def mistakes_grid(
    images: np.ndarray, labels: np.ndarray, probs: np.ndarray, k: int = 25, class_names: tuple[str, ...] = EMOTIONS
) -> bytes:
    """PNG bytes: the k most confident wrong predictions, each titled "true→pred p=0.93".

    images: uint8 gray [N, H, W] (or [N, H, W, 1]), aligned with labels [N] and probs [N, classes].
    With no mistakes the PNG says so.
    """
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    labels, probs = _check_predictions(labels, probs, len(class_names))
    images = _gray_images(images, len(labels))
    picked = _most_confident_mistakes(labels, probs, k)
    cols = max(1, math.ceil(math.sqrt(len(picked))))
    rows = max(1, math.ceil(len(picked) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picked):
        pred = int(probs[i].argmax())
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{class_names[labels[i]]}→{class_names[pred]} p={probs[i, pred]:.2f}", fontsize=8)
    if len(picked) == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    return _png(fig)


# --- trained models (TensorFlow from here on, imported lazily) -------------------------

SPLIT_NAMES = ("train", "val", "test")


def evaluate_run(model, dataset, config, run_dir: str, state, report_to=None) -> dict:
    """After training: metrics.json, confusion matrices, curves and mistakes, all in `run_dir`;
    the per-split reports printed to `report_to` (default stdout: a run's results)."""
    import json
    import logging

    log = logging.getLogger(__name__)
    summary: dict = {
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "monitor": config.monitor,
        "best_monitored": getattr(state, "best_monitored", None),
        "best_val_loss": state.best_val_loss,
        "tta": config.eval_tta,
        "class_names": list(config.classes),
        "dedupe": config.dedupe,  # "eval": training faces identical to a val/test face were dropped
    }
    if getattr(state, "communication", None):  # several workers: scaling.CommunicationShare
        summary["communication"] = state.communication
    splits = {"val": dataset.val, "test": dataset.test}
    for name, split in splits.items():
        if split is None:
            log.info("no test split in %s: no test metrics", dataset.source)
            continue
        probs = predict_probs(model, split.images, config, tta=config.eval_tta)
        metrics = compute_metrics(split.labels, probs, config.classes)
        summary[f"{name}_accuracy"] = metrics["accuracy"]
        summary[f"{name}_macro_f1"] = metrics["macro_f1"]
        summary[name] = metrics
        write_confusion(run_dir, metrics, name)
        if name == "val":
            storage.write_bytes(
                storage.join(run_dir, "val_mistakes.png"),
                mistakes_grid(split.images, split.labels, probs, class_names=config.classes),
            )
        print(
            format_report(metrics, f"{name} ({len(split)} images, epoch {state.best_epoch}: best {config.monitor})"),
            file=report_to or sys.stdout,
            flush=True,
        )
    write_history_plot(run_dir)
    write_tensorboard_images(run_dir)
    storage.write_text(storage.join(run_dir, METRICS_FILE), json.dumps(summary, indent=2) + "\n")
    return summary


TENSORBOARD_IMAGES = ("curves.png", "val_confusion.png", "test_confusion.png", "val_mistakes.png")


def write_tensorboard_images(run_dir: str) -> list[str]:
    """The run's PNGs (curves, confusion matrices, mistakes) as TensorBoard images under
    <run_dir>/tensorboard/eval; returns the names written."""
    import tempfile

    import tensorflow as tf

    names = [n for n in TENSORBOARD_IMAGES if storage.exists(storage.join(run_dir, n))]
    if not names:
        return []
    local_run = storage.local_path(run_dir)
    tmp = None if local_run else tempfile.mkdtemp(prefix="fer_dist_tb_eval_")
    logdir = os.path.join(local_run, "tensorboard", "eval") if local_run else tmp
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=0):
        for name in names:
            image = tf.io.decode_png(storage.read_bytes(storage.join(run_dir, name)), channels=3)
            tf.summary.image(name.removesuffix(".png"), image[tf.newaxis], step=0)
    writer.close()
    if tmp:
        storage.upload_dir(tmp, storage.join(run_dir, "tensorboard", "eval"))
        shutil.rmtree(tmp, ignore_errors=True)
    return names


def check_same_data(run_dirs: list[str], configs: list) -> None:
    """UserError naming two runs of an ensemble whose config.json `data` differs."""
    for run_dir, config in zip(run_dirs[1:], configs[1:]):
        if config.data != configs[0].data:
            raise UserError(
                f"cannot ensemble {run_dirs[0]} and {run_dir}: trained on different data "
                f"({configs[0].data!r} vs {config.data!r})"
            )


def check_same_classes(run_dirs: list[str], configs: list, models: list | None = None) -> None:
    """UserError naming two runs of an ensemble whose classes differ (by name and order, both
    lists shown), or a run whose model's outputs are not one per class."""
    for run_dir, config in zip(run_dirs[1:], configs[1:]):
        if config.classes != configs[0].classes:
            raise UserError(
                f"cannot ensemble {run_dirs[0]} and {run_dir}: different classes "
                f"({', '.join(configs[0].classes)} vs {', '.join(config.classes)})"
            )
    for run_dir, config in zip(run_dirs[1:], configs[1:]):
        if config.input_channels != configs[0].input_channels:
            raise UserError(
                f"cannot ensemble {run_dirs[0]} and {run_dir}: one takes {configs[0].input_channels} faces, "
                f"the other {config.input_channels}"
            )
    for run_dir, config, model in zip(run_dirs, configs, models or []):
        if model.output_shape[-1] != len(config.classes):
            raise UserError(
                f"{run_dir}: the model has {model.output_shape[-1]} outputs, expected {len(config.classes)} classes "
                f"({', '.join(config.classes)})"
            )


def choose_split(available, split: str | None) -> str:
    """The split to score of a `data.Splits`: `split`, or test if the data has it, else val."""
    if split is not None and split not in SPLIT_NAMES:
        raise UserError(f"--split {split!r}: expected one of {', '.join(SPLIT_NAMES)}")
    if split is None:
        split = next((s for s in ("test", "val") if s in available.splits), "test")
    if split not in available.splits:
        has = ", ".join(f"{s} ({available.names[s]})" for s in available.splits) or "none"
        other = next((s for s in ("test", "val", "train") if s in available.splits), None)
        use = f"; use --split {other}" if other else ""
        raise UserError(f"--split {split}: {available.source} has no {split} split (it has: {has}){use}")
    return split


def tta_key(used: list[str]) -> str:
    """One name for the TTA of an evaluation: the mode, or the modes joined by "+" when the runs differ."""
    return "+".join(mode for mode in TTA_MODES if mode in used)


def members(run_dirs: list[str]) -> list[str]:
    """The runs of an evaluation as sorted absolute URIs (what keys an ensemble)."""
    return sorted(storage.absolute(r).rstrip("/") for r in run_dirs)


def evaluation_name(data: str, split: str, tta: str, run_dirs: list[str]) -> str:
    """The default directory name of an evaluation under RUN/evaluations/:
    `<data stem>-<split>`, then `-tta_<tta>` unless the TTA is none, then for several runs
    `-ensemble_<first 8 hex digits of the sha256 of the sorted absolute member URIs>`."""
    import hashlib

    stem = os.path.basename(data.rstrip("/")).split(".")[0] or "data"
    name = f"{stem}-{split}" + (f"-tta_{tta}" if tta != "none" else "")
    if len(run_dirs) > 1:
        digest = hashlib.sha256("\n".join(members(run_dirs)).encode()).hexdigest()[:8]
        name += f"-ensemble_{digest}"
    return name


def holds_evaluation(out: str) -> bool:
    return storage.exists(storage.join(out, METRICS_FILE))


def check_output_free(output: str) -> None:
    """UserError if an explicit --output already holds an evaluation."""
    if holds_evaluation(output):
        raise UserError(f"--output {output} already holds an evaluation ({METRICS_FILE}); choose another directory")


def free_output(base: str) -> str:
    """`base` if it holds no evaluation, else the first of `base-2`, `base-3`, ... that holds none."""
    out, n = base, 1
    while holds_evaluation(out):
        n += 1
        out = f"{base}-{n}"
    return out


@dataclass
class Evaluation:
    """What `prepare_evaluation` loaded: the runs, the split chosen and the TTA of each run."""

    run_dirs: list[str]
    data: str
    configs: list
    models: list
    split: str
    chosen: object  # data.Split
    used: list[str]  # TTA of each run

    @property
    def tta(self) -> str | list[str]:
        return self.used[0] if len(set(self.used)) == 1 else self.used

    def default_output(self) -> str:
        name = evaluation_name(self.data, self.split, tta_key(self.used), self.run_dirs)
        return storage.join(self.run_dirs[0], "evaluations", name)

    def score(self) -> dict:
        """Metrics of the runs' mean (TTA-averaged) probabilities on the chosen split, with `tta`;
        a log line before and after (with the seconds)."""
        import logging
        import time

        log = logging.getLogger(__name__)
        tta = self.tta if isinstance(self.tta, str) else "/".join(self.tta)
        log.info(
            "scoring %d %s images with %d model(s), TTA %s ...", len(self.chosen), self.split, len(self.models), tta
        )
        start = time.perf_counter()
        probs = average_probs(
            [
                predict_probs(model, self.chosen.images, config, tta=t)
                for config, model, t in zip(self.configs, self.models, self.used)
            ]
        )
        metrics = compute_metrics(self.chosen.labels, probs, self.configs[0].classes)
        metrics["tta"] = self.tta
        log.info("scored in %.1f s", time.perf_counter() - start)
        return metrics


def prepare_evaluation(
    run_dirs: list[str], data: str, split: str | None, skip_bad_rows: bool = False, tta: str | None = None
) -> Evaluation:
    """Loads the runs and the data split to score, checking everything that is cheap to check:
    the flags, that an ensemble's runs share their training data and class count, and that the
    data has the split (no training split is needed: a file of PrivateTest rows alone will do)."""
    import logging

    from fer_dist import data as data_lib

    if not run_dirs:
        raise UserError("no run directories to evaluate")
    if split is not None and split not in SPLIT_NAMES:
        raise UserError(f"--split {split!r}: expected one of {', '.join(SPLIT_NAMES)}")
    if tta is not None:
        check_tta(tta)
    configs = [load_config(r) for r in run_dirs]
    check_same_data(run_dirs, configs)
    check_same_classes(run_dirs, configs)
    first = configs[0]
    available = data_lib.load_splits(
        data,
        skip_bad_rows=skip_bad_rows,
        val_fraction=first.val_fraction,
        seed=first.seed,
        builtin_size=first.builtin_size,
        votes=data_lib.votes_of(first) if storage.absolute(data) == first.data else None,  # its own FER+ labels
        channels=first.input_channels,
    )
    for note in available.notes:
        logging.getLogger(__name__).info("%s", note)
    available = data_lib.as_classes(available, first.classes, f"the run {run_dirs[0]}")
    split = choose_split(available, split)
    models = [load_run(r)[1] for r in run_dirs]
    check_same_classes(run_dirs, configs, models)
    used = [tta or config.eval_tta for config in configs]
    return Evaluation(run_dirs, data, configs, models, split, available.splits[split], used)


def evaluate_data(
    run_dirs: list[str], data: str, split: str | None, skip_bad_rows: bool = False, tta: str | None = None
) -> tuple[dict, str]:
    """Scores one run (or the ensemble of several: mean probabilities) on a data file's split.

    `tta`: test-time augmentation for every run (None: each run's own `eval_tta`); each
    model's probabilities are TTA-averaged first, then averaged over the models.
    Returns (metrics, the split used). Writes nothing; the caller decides where results go."""
    evaluation = prepare_evaluation(run_dirs, data, split, skip_bad_rows=skip_bad_rows, tta=tta)
    return evaluation.score(), evaluation.split


def write_evaluation(out: str, metrics: dict, split: str) -> str:
    """Writes <split>_confusion.csv/.png, then metrics.json (last: it marks a finished evaluation)
    into `out`; returns the metrics.json URI. UserError if `out` gained a metrics.json meanwhile."""
    import json

    metrics_uri = storage.join(out, METRICS_FILE)
    if storage.exists(metrics_uri):
        raise UserError(f"{out} already holds an evaluation ({METRICS_FILE}); not overwriting it")
    write_confusion(out, metrics, split)
    storage.write_text(metrics_uri, json.dumps(metrics, indent=2) + "\n")
    return metrics_uri
