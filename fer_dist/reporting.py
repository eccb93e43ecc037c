"""The chief's outputs: logs, progress, history.csv, TensorBoard, checkpoints handed to the
session, and after training metrics.json, confusion matrices, curves and the exported model.

`reporter_for(chief, ...)` is called once per `train.fit`: the chief (`rank.is_chief`) gets a
`Reporter`, every other worker a `NullReporter` whose methods do nothing, so the loop never
asks which worker it runs on.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import time

from fer_dist import storage
from fer_dist.config import TrainConfig, describe

log = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"  # written last: the run is complete (evaluate.METRICS_FILE)
RAY_STEP_LINE_S = 60.0  # at most one step-progress line a minute per Ray run
CONFIG_FILE = "config.json"


class NullReporter:
    """What a non-chief worker reports: nothing."""

    def info(self, message: str, *args) -> None:
        pass

    def start(self, dataset, replicas: int, per_worker_batch_size: int) -> None:
        pass

    def begin(self, state) -> None:
        pass

    def epoch_start(self, epoch: int, steps: int) -> None:
        pass

    def step(self, epoch: int, done: int, steps: int, loss_sum: float, correct_sum: float) -> None:
        pass

    def epoch_end(self, state, improved: bool) -> None:
        pass

    def checkpoint(self, save) -> str | None:
        """Chief: `save(directory)` into a fresh temporary directory, returned. Others: None."""
        return None

    def done_with(self, checkpoint_dir: str | None) -> None:
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def close(self) -> None:
        """At the end of training, whatever happened: nothing is left in the temp dir."""


class Reporter(NullReporter):
    """The chief's reporter: config.json, history.csv and TensorBoard scalars in the run directory."""

    def __init__(self, run_dir: str, config: TrainConfig, show_progress: bool):
        self.run_dir = run_dir
        self.config = config
        self.show_progress = show_progress
        self._tb_local = None  # the TensorBoard directory: in the run, or a temp dir uploaded each epoch
        self._writer = None
        self._bar = None
        self._epoch_start = 0.0

    def info(self, message: str, *args) -> None:
        log.info(message, *args)

    def start(self, dataset, replicas: int, per_worker_batch_size: int) -> None:
        label = run_label(self.run_dir)  # a Ray run's name: its trial or run, on a shared console
        log.info("%sconfig: %s", label, describe(self.config))
        log.info(
            "%sdata %s: train %d, val %d, test %s; %d replica(s), per_worker_batch_size %d",
            label,
            dataset.source,
            len(dataset.train),
            len(dataset.val),
            len(dataset.test) if dataset.test is not None else "none",
            replicas,
            per_worker_batch_size,
        )
        for note in dataset.notes:
            log.info("%sdata: %s", label, note)

    def begin(self, state) -> None:
        """config.json, and the history so far of a resumed run. A run that trains again is not
        complete until its new export is: an earlier metrics.json goes (`finish` writes it last)."""
        storage.write_text(storage.join(self.run_dir, CONFIG_FILE), self.config.to_json())
        if state.history:
            self.write_history(state.history)
        metrics_uri = storage.join(self.run_dir, METRICS_FILE)
        if storage.exists(metrics_uri):
            storage.delete_file(metrics_uri)

    def epoch_start(self, epoch: int, steps: int) -> None:
        self._epoch_start = time.perf_counter()
        self._bar = None
        self._logged_tenth = 0
        if self.show_progress:
            import keras

            print(f"Epoch {epoch}/{self.config.epochs}", flush=True)
            self._bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "accuracy"])

    def step(self, epoch: int, done: int, steps: int, loss_sum: float, correct_sum: float) -> None:
        """A progress bar on a terminal; in logs (CI, files) a line every 10% of an epoch, in Ray
        workers at most one a minute (`_step_line_due`)."""
        if self._bar is not None:
            seen = done * self.config.global_batch_size
            self._bar.update(done, [("loss", loss_sum / done), ("accuracy", correct_sum / seen)])
        elif steps >= 50 and self._logged_tenth < 10 * done // steps < 10 and self._step_line_due():
            self._logged_tenth = 10 * done // steps
            elapsed = time.perf_counter() - self._epoch_start
            log.info(
                "%sepoch %d: %d/%d steps (%d%%) loss %.4f, %.0f img/s, ETA %.0f s",
                run_label(self.run_dir),
                epoch,
                done,
                steps,
                100 * done // steps,
                loss_sum / done,
                done * self.config.global_batch_size / elapsed,
                elapsed / done * (steps - done),
            )

    def _step_line_due(self) -> bool:
        """In a Ray worker, where the runs or trials of a job share one console, a step line at most
        every RAY_STEP_LINE_S (short epochs: the epoch line alone); in a job's own process, always."""
        if not run_label(self.run_dir):
            return True
        now = time.perf_counter()
        if now - max(self._epoch_start, getattr(self, "_last_step_line", 0.0)) < RAY_STEP_LINE_S:
            return False
        self._last_step_line = now
        return True

    def epoch_end(self, state, improved: bool) -> None:
        row = state.history[-1]
        log.info(
            "%sepoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f lr %.3g %.0f img/s%s",
            run_label(self.run_dir),
            row["epoch"],
            self.config.epochs,
            row["loss"],
            row["accuracy"],
            row["val_loss"],
            row["val_accuracy"],
            row["learning_rate"],
            row["images_per_second"],
            f" * best {self.config.monitor}" if improved else "",
        )
        self.write_history(state.history)
        self.write_scalars(row)

    def write_history(self, history: list[dict]) -> None:
        import pandas as pd

        buf = io.StringIO()
        pd.DataFrame(history).to_csv(buf, index=False)
        storage.write_text(storage.join(self.run_dir, HISTORY_FILE), buf.getvalue())

    def write_scalars(self, row: dict) -> None:
        import tensorflow as tf

        if self._writer is None:
            local = storage.local_path(self.run_dir)
            self._tb_local = os.path.join(local, "tensorboard") if local else tempfile.mkdtemp(prefix="fer_dist_tb_")
            self._writer = tf.summary.create_file_writer(os.path.join(self._tb_local, "train"))
        with self._writer.as_default(step=row["epoch"]):
            for key, value in row.items():
                if key != "epoch":
                    tf.summary.scalar(key, value)
        self._writer.flush()
        if storage.local_path(self.run_dir) is None:
            storage.upload_dir(self._tb_local, storage.join(self.run_dir, "tensorboard"))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            if storage.local_path(self.run_dir) is None:  # its files were uploaded after each epoch
                shutil.rmtree(self._tb_local, ignore_errors=True)

    def checkpoint(self, save) -> str | None:
        directory = tempfile.mkdtemp(prefix="fer_dist_ckpt_")
        save(directory)
        return directory


def reporter_for(chief: bool, run_dir: str, config: TrainConfig, show_progress: bool) -> NullReporter:
    """The one place that turns "is this the chief?" into who writes outputs."""
    return Reporter(run_dir, config, show_progress) if chief else NullReporter()


# ---------------------------------------------------------------------------------
# After training (the chief): final evaluation and the exported model.
# ---------------------------------------------------------------------------------
def finish(result, config: TrainConfig, run_dir: str) -> dict:
    """The exported model (model.keras, saved_model/), then the final evaluation: confusion
    matrices, curves and, written last, metrics.json, which marks the run complete. A run that
    trained again loses its old metrics.json first; a run whose export was interrupted (a
    signal there stops at once) is finished by `--resume`."""
    from fer_dist import evaluate, monitor, preemption, runs

    metrics_uri = storage.join(run_dir, METRICS_FILE)
    done = _read_metrics(metrics_uri)
    if not result.trained_epochs and done is not None and done.get("complete", True):
        log.info("the run was already complete: keeping its metrics.json and exported model")
        return done
    label = run_label(run_dir)
    with preemption.stop_at_once(f"the run is not complete; `{runs.resume_command(run_dir)}` finishes it"):
        if storage.exists(metrics_uri):
            storage.delete_file(metrics_uri)  # complete again only when the new export is
        start = time.perf_counter()
        log.info(
            "%sexporting model.keras and saved_model/: the weights of epoch %d, the best by %s ...",
            label,
            result.state.best_epoch,
            monitor.describe(config.monitor),
        )
        export_model(result.model, config, run_dir)
        log.info("%sexported model.keras and saved_model/ to %s in %.1f s", label, run_dir, time.perf_counter() - start)
        start = time.perf_counter()
        log.info("%sfinal evaluation with the weights of epoch %d ...", label, result.state.best_epoch)
        metrics = evaluate.evaluate_run(result.model, result.dataset, config, run_dir, result.state)
        log.info("%sfinal evaluation: done in %.1f s", label, time.perf_counter() - start)
    return metrics


def _read_metrics(uri: str) -> dict | None:
    """A run's metrics.json, None when absent or not one (a damaged file marks nothing complete)."""
    import json

    try:
        found = json.loads(storage.read_text(uri))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return found if isinstance(found, dict) else None


def run_label(run_dir: str) -> str:
    """'NAME: ' in a Ray worker, where the lines of several runs or trials meet on one console
    (Ray prefixes them with a pid only); '' in a job's own process."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    try:
        if ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
            return ""
    except Exception:
        return ""
    return f"{run_dir.rstrip('/').rsplit('/', 1)[-1]}: "


def export_model(model, config: TrainConfig, run_dir: str) -> None:
    """`model.keras` (Keras 3: preprocessed input, for `fer_dist` itself) and `saved_model/` (the
    serving SavedModel of `serving.export`: raw faces in, probabilities out, TensorFlow only)
    beside the checkpoints. Written locally first, then copied (run_dir may be gs://)."""
    from fer_dist import serving

    with tempfile.TemporaryDirectory(prefix="fer_dist_export_") as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            storage.write_bytes(storage.join(run_dir, "model.keras"), f.read())
        saved = os.path.join(tmp, "saved_model")
        serving.export(model, config, saved)
        storage.upload_dir(saved, storage.join(run_dir, "saved_model"))
