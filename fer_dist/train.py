"""The training loop: one function for one process, one GPU, or N Ray workers.

    python jobs/train.py --data data/fer2013.csv --preset seed

`fit(config, session)` reads top to bottom: set up (`start`), then per epoch enter the phase
when it changes (`enter_phase`), train (`train_epoch`), PreciseBN, validate, and end the epoch
(`end_epoch`: schedule, early stop, time budget, checkpoint, report). The parts live in the
modules that own them:

    steps.py       the strategy (the one place it is touched) and the compiled train/eval steps
    optim.py       optimizers and learning-rate schedules
    batchnorm.py   BatchNorm calibration and PreciseBN
    budget.py      the train_minutes budget
    phases.py      the switch from a frozen trunk to unfreezing
    inputs.py      images, or the frozen prefix's cached features (features.py)
    checkpoint.py  the checkpoint format; sessions.py / ray_worker.RaySession store them
    reporting.py   the chief's outputs (logs, history.csv, TensorBoard); no-ops elsewhere
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import shutil
import threading
import time

import numpy as np

from fer_dist import (
    augment,
    batchnorm,
    checkpoint,
    data,
    decoded,
    monitor,
    optim,
    phases,
    pipeline,
    preemption,
    scaling,
    storage,
)
from fer_dist import inputs as inputs_lib
from fer_dist import model as model_lib
from fer_dist import steps as steps_lib
from fer_dist.budget import TimeBudget
from fer_dist.config import TrainConfig
from fer_dist.errors import UserError
from fer_dist.reporting import NullReporter, reporter_for
from fer_dist.sessions import Session
from fer_dist.steps import Distributed, Steps, configure_runtime

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------
# Loop state, saved in every checkpoint.
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    step: int = 0  # steps done in epoch `epoch + 1` (0: at an epoch boundary)
    learning_rate: float = 0.0  # the plateau schedule's current rate (cosine: config.learning_rate)
    best_val_loss: float = float("inf")
    best_val_accuracy: float = 0.0
    best_monitored: float | None = None  # the best value of config.monitor so far
    best_epoch: int = 0  # epoch (1-based) of the best config.monitor: the weights restored and exported
    plateau_wait: int = 0  # epochs since config.monitor last improved, for LR decay
    stop_wait: int = 0  # the same, for early stopping
    stopped_early: bool = False
    loop_seconds: float = 0.0  # wall time spent in training steps and validation so far (train_minutes)
    out_of_time: bool = False  # the train_minutes budget ran out
    phase: int = 1  # training phase of the last epoch (2: after `unfreeze_epoch`)
    partial: dict = dataclasses.field(default_factory=dict)  # at a step checkpoint: the epoch's totals so far
    communication: dict = dataclasses.field(default_factory=dict)  # scaling.CommunicationShare (several workers)
    restarts: int = 0  # starts from a checkpoint (worker-group restarts, elastic resizes, --resume)
    history: list = dataclasses.field(default_factory=list)
    metrics: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, fields: dict) -> LoopState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in known})

    def monitoring(self, config: TrainConfig) -> LoopState:
        """A state saved before `monitor` existed: its best so far of `config.monitor`."""
        if self.best_monitored is None and self.best_epoch:
            self.best_monitored = self.best_val_accuracy if config.monitor == "val_accuracy" else self.best_val_loss
        return self

    def update(self, row: dict, config: TrainConfig) -> tuple[bool, bool]:
        """Applies one epoch's metrics: (improved, stop)."""
        self.epoch, self.step, self.partial = row["epoch"], 0, {}
        self.history.append(row)
        self.metrics = row
        self.best_val_accuracy = max(self.best_val_accuracy, row["val_accuracy"])
        self.best_val_loss = min(self.best_val_loss, row["val_loss"])
        improved = monitor.better(row[config.monitor], self.best_monitored, config.monitor)
        if improved:
            self.best_monitored, self.best_epoch = row[config.monitor], row["epoch"]
            self.plateau_wait = self.stop_wait = 0
        else:
            self.plateau_wait += 1
            self.stop_wait += 1
            if config.lr_schedule == "plateau" and self.plateau_wait >= config.decay_patience:
                self.learning_rate = max(self.learning_rate * config.decay_factor, config.min_learning_rate)
                self.plateau_wait = 0
        stop = bool(config.early_stop_patience) and self.stop_wait >= config.early_stop_patience
        self.stopped_early = stop and self.epoch < config.epochs
        return improved, stop


@dataclasses.dataclass
class FitResult:
    state: LoopState
    model: object  # a plain (strategy-free) Keras model holding the best weights (chief), else None
    rank: int
    dataset: object = None
    trained_epochs: int = 0  # epochs trained by this call (0: the run was already complete)
    config: TrainConfig | None = None  # the config it trained with, its data's class names filled in


@dataclasses.dataclass
class Run:
    """What one `fit` call works with."""

    config: TrainConfig
    session: Session
    dist: Distributed
    dataset: data.Dataset
    reporter: NullReporter
    model: object
    optimizer: object
    state: LoopState
    best_weights: list | None  # the model's values at the best epoch so far
    steps_per_epoch: int
    budget: TimeBudget
    class_weights: object  # a tf.constant of per-class loss weights, or None
    precise_bn: batchnorm.PreciseBN | None
    first_epoch: int = 0
    watcher: preemption.NoWatcher = dataclasses.field(default_factory=preemption.NoWatcher)
    last_checkpoint: float = 0.0  # perf_counter() of the last step checkpoint (checkpoint_every_minutes)

    def nothing_left(self) -> bool:
        return self.first_epoch >= self.config.epochs or self.state.stopped_early or self.state.out_of_time


@dataclasses.dataclass
class Phase:
    """A training phase's model, inputs and compiled steps."""

    number: int
    inputs: inputs_lib.Inputs
    steps: Steps
    train_batches: object
    val_batches: object
    val_steps: int


@dataclasses.dataclass
class EpochTotals:
    """An epoch's running sums. Steps add this worker's sums as tensors (no host sync per step);
    `total` adds them up over the workers (one collective) into `loss_sum` / `correct_sum`."""

    learning_rate: float  # of the epoch's last step
    start: float = 0.0
    done: int = 0  # steps done in the epoch (with those before the step checkpoint resumed from)
    local_loss: object = 0.0  # this worker's sums over this call's steps
    local_correct: object = 0.0
    loss_sum: float = 0.0  # over every worker and every step of the epoch so far, after `total`
    correct_sum: float = 0.0
    train_seconds: float = 0.0
    seconds_before: float = 0.0  # spent on this epoch before a step checkpoint it resumed from
    sums_before: tuple = (0.0, 0.0)  # (loss, hits) of the steps before that step checkpoint

    def add(self, loss, correct) -> None:
        self.done += 1
        self.local_loss = self.local_loss + loss
        self.local_correct = self.local_correct + correct

    def shown(self, share: float) -> tuple[float, float]:
        """Running (loss, hits) for progress: this worker's sums scaled to the global batch."""
        return (
            self.sums_before[0] + float(self.local_loss) * share,
            self.sums_before[1] + float(self.local_correct) * share,
        )

    def total(self, dist) -> None:
        """Every worker, at the same step: the sums over the workers."""
        loss, correct = dist.sum_over_workers([self.local_loss, self.local_correct])
        self.loss_sum, self.correct_sum = self.sums_before[0] + loss, self.sums_before[1] + correct

    def saved(self) -> dict:
        """What a step checkpoint keeps of them (`LoopState.partial`), after `total`."""
        seconds = self.seconds_before + time.perf_counter() - self.start
        return {"done": self.done, "loss_sum": self.loss_sum, "correct_sum": self.correct_sum, "seconds": seconds}


# ---------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------
def fit(config: TrainConfig, session: Session, dataset=None) -> FitResult:
    """Trains `config` to the end (or early stop), checkpointing every epoch through `session`."""
    run = start(config, session, dataset)
    if run.nothing_left():
        report_nothing_left(run)
        return result(run)
    phase, run.watcher = None, session.watcher()
    try:
        for epoch in range(run.first_epoch + 1, config.epochs + 1):
            if phase is None or phases.phase_of(config, epoch) != phase.number:
                release_inputs(run, phase)
                phase = enter_phase(run, epoch)
                measure_communication(run)
            totals = train_epoch(run, phase, epoch)
            if run.precise_bn:
                run.precise_bn(phase.inputs.net, phase.inputs.train_features, epoch)
            val_loss, val_correct = validate(run, phase)
            row = epoch_row(run, totals, val_loss, val_correct, epoch)
            if end_epoch(run, row):
                break
    finally:
        run.watcher.close()
        run.reporter.close()
    release_inputs(run, phase)
    if run.state.communication.get("step_s"):
        share = scaling.CommunicationShare.from_dict(run.state.communication)
        run.reporter.info("%s", share.end_line())
        advice = share.advice()
        if advice:
            run.reporter.info("%s", advice.line())
    return result(run)


def start(config: TrainConfig, session: Session, dataset) -> Run:
    """The strategy, data, model, optimizer and loop state (restored from the session's checkpoint)."""
    dist = Distributed.create(config)  # before any other TF op: MWMS needs a fresh context
    configure_runtime(config)
    if config.global_batch_size < dist.replicas:  # uneven splits are fine (pipeline.pipeline_slice)
        raise UserError(f"global_batch_size={config.global_batch_size} is smaller than the {dist.replicas} replicas")
    workers = dist.replicas // dist.local_replicas
    slices = [pipeline.pipeline_slice(config.global_batch_size, workers, p) for p in range(workers)]
    if any((s.stop - s.start) % dist.local_replicas for s in slices):  # checked on every worker, before any collective
        raise UserError(
            f"global_batch_size={config.global_batch_size} does not split over {workers} workers of "
            f"{dist.local_replicas} replicas each"
        )
    if dataset is None:
        dataset = decoded.load_for(config)
    config = dataclasses.replace(
        config, class_names=data.check_classes(config.class_names, dataset), channels=dataset.channels
    )
    reporter = reporter_for(dist.chief, session.run_dir, config, session.show_progress)
    reporter.start(dataset, dist.replicas, config.global_batch_size // dist.replicas)
    model, optimizer = build_model(config, dist)
    state, best = restore(config, session, model, optimizer, dataset, reporter)
    run = Run(
        config,
        session,
        dist,
        dataset,
        reporter,
        model,
        optimizer,
        state,
        best,
        steps_per_epoch=pipeline.steps_per_epoch(len(dataset.train), config),
        budget=TimeBudget(config.train_minutes * 60.0, dist.any_worker(), dist.vote_every(config)),
        class_weights=class_weights(config, dataset, reporter),
        precise_bn=batchnorm.PreciseBN(config, dataset.train, dist) if config.precise_bn else None,
        first_epoch=state.epoch,
    )
    if not run.nothing_left():  # a finished run's config.json stays as it was (--resume --epochs 2)
        reporter.begin(state)
    return run


def build_model(config: TrainConfig, dist: Distributed):
    """The model and its optimizer, with slots for every variable the run ever trains (phase 2's
    when there is one; phase 1 then updates a subset of them)."""
    with dist.scope():
        model = model_lib.build(config)
        optimizer = optim.make_optimizer(config)
        model_lib.set_phase(model, config, 2 if config.unfreeze_epoch else 1)
        optimizer.build(model.trainable_variables)
        model_lib.set_phase(model, config, 1)
    return model, optimizer


def restore(config: TrainConfig, session: Session, model, optimizer, dataset, reporter):
    """(loop state, best weights): from the session's checkpoint, else fresh (calibrated if asked)."""
    directory = session.restore_dir()
    if not directory:
        if config.calibrate_batchnorm:  # a checkpoint holds calibrated statistics already
            count, images = batchnorm.calibrate(model, dataset.train.images, config)
            reporter.info(
                "calibrate_batchnorm: set the moving statistics of %d BatchNorm layers from %d training images",
                count,
                images,
            )
        return LoopState(learning_rate=config.learning_rate), None
    try:
        fields, best = checkpoint.load(directory, model=model, optimizer=optimizer)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    state = LoopState.from_dict(fields).monitoring(config)
    state.restarts += 1
    at = f" after step {state.step} of epoch {state.epoch + 1}" if state.step else ""
    reporter.info("resumed from the checkpoint of epoch %d%s; continuing at epoch %d", state.epoch, at, state.epoch + 1)
    return state, best if best is not None else snapshot(model)


def class_weights(config: TrainConfig, dataset, reporter):
    import tensorflow as tf

    weights = augment.class_weights(dataset.train.labels, config.class_weighting, len(config.classes))
    if weights is None:
        return None
    shown = ", ".join(f"{n} {w:.2f}" for n, w in zip(config.classes, weights))
    reporter.info("class weighting %s: %s", config.class_weighting, shown)
    return tf.constant(weights)


def snapshot(model) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in model.variables]


def enter_phase(run: Run, epoch: int) -> Phase:
    """The first epoch of this call, or the switch to phase 2: freezing, inputs, compiled steps."""
    config, number = run.config, phases.phase_of(run.config, epoch)
    phases.enter(config, run.model, run.state, number, epoch, run.reporter)
    inputs = inputs_lib.for_phase(config, number, run.model, run.dataset, run.dist, run.reporter)
    epochs = range(epoch - 1, phases.last_epoch(config, number))
    skip = run.state.step if epoch == run.state.epoch + 1 else 0  # resumed from a step checkpoint
    train_batches = inputs_lib.train_batches(
        run.dist, run.dataset, config, inputs, epochs, run.steps_per_epoch, skip_steps=skip
    )
    val_batches, val_steps = inputs_lib.val_batches(run.dist, run.dataset, config, inputs)
    # Augmentation and mixup act on images in the step; on cached features only the cached flip.
    in_graph = (augment.any_image_augmentation(config) or config.mixup_alpha > 0) and inputs.net is run.model
    steps = run.dist.build_steps(
        inputs.net,
        run.model.trainable_variables,
        run.optimizer,
        config,
        class_weights=run.class_weights,
        in_graph=in_graph,
    )
    return Phase(number, inputs, steps, train_batches, val_batches, val_steps)


def measure_communication(run: Run) -> None:
    """Several workers: time the all-reduce of the step's gradient buffer alone, and of the whole
    buffer in float32 (the link's bandwidth, for the advice) where the run sends something else
    (once per worker count and trainable set; kept in the loop state, so a resumed run does not
    measure again)."""
    dist, state, config = run.dist, run.state, run.config
    workers = dist.replicas // dist.local_replicas
    variables = run.model.trainable_variables
    shapes = [v.shape for v in variables]
    values, sent = steps_lib.wire_bytes(shapes, config)  # a phase that unfreezes layers sends more: measure again
    if workers == 1 or (state.communication.get("workers"), state.communication.get("values")) == (workers, values):
        return
    seconds, vote = dist.time_all_reduce(variables, config)
    whole = dataclasses.replace(config, **scaling.wire_settings("float32"))
    same = steps_lib.wire_name(config) == steps_lib.wire_name(whole)
    float32_s = seconds if same else dist.time_all_reduce(variables, whole)[0]
    modes = {mode: wire_of(shapes, config, mode) for mode in scaling.ADVISED_MODES}
    share = scaling.CommunicationShare(
        workers,
        values,
        sent,
        steps_lib.wire_name(config),
        seconds,
        vote,
        collectives=len(steps_lib.wire_groups(shapes, config)),
        float32_s=float32_s,
        float32_bytes=modes["float32"][0],
        modes=modes,
    )
    state.communication = share.as_metrics()
    run.reporter.info("%s", share.start_line())
    note = scaling.optimizer_note(config.optimizer, config.gradient_compression, config.adam_variance)
    if note:
        run.reporter.info("%s", note)


def wire_of(shapes: list, config: TrainConfig, mode: str) -> list[int]:
    """[bytes, collectives] of one step's gradients in another wire mode (`scaling.wire_settings`)."""
    other = dataclasses.replace(config, **scaling.wire_settings(mode))
    return [steps_lib.wire_bytes(shapes, other)[1], len(steps_lib.wire_groups(shapes, other))]


def train_epoch(run: Run, phase: Phase, epoch: int) -> EpochTotals:
    """The epoch's training steps (from a step checkpoint's step when resumed from one); stops
    early when the time budget runs out, and checkpoints at a step on a preemption notice."""
    config, state, steps = run.config, run.state, run.steps_per_epoch
    totals = epoch_totals(state)
    run.optimizer.learning_rate.assign(totals.learning_rate)
    run.reporter.epoch_start(epoch, steps)
    scale = config.unfreeze_lr_factor if phase.number == 2 else 1.0
    for step in range(state.step, steps):
        lr = optim.scheduled_learning_rate(config, state.learning_rate, (epoch - 1) * steps + step, steps, scale)
        if lr != totals.learning_rate:  # per step under cosine or warm-up; else once per epoch, as above
            totals.learning_rate = lr
            run.optimizer.learning_rate.assign(lr)
        totals.add(*phase.steps.train(phase.train_batches))
        if totals.done % config.vote_every_steps == 0 or step + 1 == steps:  # a host sync, for progress
            run.reporter.step(epoch, totals.done, steps, *totals.shown(run.dist.share))
        global_step = (epoch - 1) * steps + step + 1
        spent = state.loop_seconds + totals.seconds_before  # with this epoch's part before a step checkpoint
        if step + 1 < steps and run.budget.used_up_mid_epoch(spent, totals.start, global_step):
            state.out_of_time = True
            break
        if step + 1 < steps:
            check_preemption(run, totals, global_step) or periodic_checkpoint(run, totals, global_step)
    totals.total(run.dist)
    totals.train_seconds = totals.seconds_before + time.perf_counter() - totals.start
    return totals


def epoch_totals(state: LoopState) -> EpochTotals:
    """A fresh epoch's totals, or those a step checkpoint saved (`LoopState.partial`)."""
    totals = EpochTotals(learning_rate=state.learning_rate, start=time.perf_counter())
    if state.step:
        saved = state.partial
        totals.done, totals.seconds_before = saved["done"], saved["seconds"]
        totals.sums_before = (saved["loss_sum"], saved["correct_sum"])
    return totals


def check_preemption(run: Run, totals: EpochTotals, global_step: int) -> bool:
    """On a notice, a checkpoint at this step; then exit (a signal) or train on (Ray's notice).
    True when a checkpoint was written."""
    notice = run.watcher.poll(global_step)
    if notice is None:
        return False
    seconds, where = step_checkpoint(run, totals)
    if notice.exit_signal is None:
        run.reporter.info("%s: checkpoint at %s %s; training on", notice.why, where, notice.timing(seconds))
        storage.retry_not_after(None)  # written: later writes may retry again (the node may yet stay)
        return True
    exit_now(run, notice, f"checkpoint at {where} {notice.timing(seconds)}")


def periodic_checkpoint(run: Run, totals: EpochTotals, global_step: int) -> None:
    """`checkpoint_every_steps` / `checkpoint_every_minutes`: a step checkpoint when due (the
    minutes by a vote at the vote steps, so that every worker checkpoints at the same step)."""
    config = run.config
    due = bool(config.checkpoint_every_steps) and global_step % config.checkpoint_every_steps == 0
    if not due and config.checkpoint_every_minutes and global_step % run.budget.every == 0:
        since = time.perf_counter() - (run.last_checkpoint or totals.start)
        due = run.budget.vote(since >= config.checkpoint_every_minutes * 60)
    if due:
        seconds, where = step_checkpoint(run, totals)
        run.reporter.info("checkpoint at %s written in %.1f s", where, seconds)


def step_checkpoint(run: Run, totals: EpochTotals) -> tuple[float, str]:
    """A checkpoint after the step just done, mid-epoch: (seconds it took, where)."""
    state, start = run.state, time.perf_counter()
    totals.total(run.dist)
    state.step, state.partial = totals.done, totals.saved()
    save_and_report(run, {"epoch": state.epoch, "step": state.step, "loss": totals.loss_sum / totals.done})
    run.last_checkpoint = time.perf_counter()
    return run.last_checkpoint - start, f"epoch {state.epoch + 1} step {state.step}"


def exit_now(run: Run, notice, done: str) -> None:
    """The one line a signal's exit logs, then exit with the signal's status."""
    run.reporter.info(
        "%s: %s; exiting with status %d (continue with --resume --name %s)",
        notice.why,
        done,
        128 + notice.exit_signal,
        run.session.run_dir.rstrip("/").rsplit("/", 1)[-1],
    )
    raise preemption.Interrupted(notice.exit_signal)


def validate(run: Run, phase: Phase) -> tuple[float, float]:
    """(summed loss, hits) over the validation split, on every worker: one collective."""
    batches = iter(phase.val_batches)
    loss = correct = 0.0
    for _ in range(phase.val_steps):
        step_loss, step_correct = phase.steps.eval(batches)
        loss, correct = loss + step_loss, correct + step_correct
    return tuple(run.dist.sum_over_workers([loss, correct]))


def epoch_row(run: Run, totals: EpochTotals, val_loss: float, val_correct: float, epoch: int) -> dict:
    """The epoch's line of history.csv."""
    done, batch, val_size = max(totals.done, 1), run.config.global_batch_size, len(run.dataset.val)
    return {
        "epoch": epoch,
        "loss": totals.loss_sum / done,
        "accuracy": totals.correct_sum / (done * batch),
        "val_loss": val_loss / val_size,
        "val_accuracy": val_correct / val_size,
        "learning_rate": totals.learning_rate,
        "images_per_second": totals.done * batch / totals.train_seconds,
        "epoch_seconds": totals.seconds_before + time.perf_counter() - totals.start,
        "steps": totals.done,
        "workers": run.dist.replicas // run.dist.local_replicas,  # the size that trained its last step
        "restarts": run.state.restarts,
        **loss_scale_of(run.optimizer),
    }


def loss_scale_of(optimizer) -> dict:
    """Mixed precision: the loss scale at the epoch's end (it halves at every skipped step)."""
    scale = optim.loss_scale(optimizer)
    return {} if scale is None else {"loss_scale": float(scale.numpy())}


def end_epoch(run: Run, row: dict) -> bool:
    """Schedule, early stop, time budget, checkpoint and report; True when training ends."""
    config, state = run.config, run.state
    state.loop_seconds += row["epoch_seconds"]
    if not state.out_of_time and row["epoch"] < config.epochs:
        state.out_of_time = run.budget.used_up(state.loop_seconds)
    improved, stop = state.update(row, config)
    if state.communication.get("workers") == row["workers"] and row["images_per_second"] > 0:
        share = scaling.CommunicationShare.from_dict(state.communication)  # (not after a resize to 1 worker)
        first = not share.step_s  # the first epoch at this worker count: the advice, once
        share.step_s = config.global_batch_size / row["images_per_second"]
        state.communication = share.as_metrics()
        advice = share.advice()
        if first and advice:
            run.reporter.info("%s", advice.line())
    if improved:
        run.best_weights = snapshot(run.model)
    run.reporter.epoch_end(state, improved)
    save_and_report(
        run, dict(row, best_val_accuracy=state.best_val_accuracy, stopped_early=stop, out_of_time=state.out_of_time)
    )
    if state.out_of_time:
        run.reporter.info(
            "train_minutes=%g used up after %d of epoch %d's %d steps (%.1f min); restoring epoch %d",
            config.train_minutes,
            row["steps"],
            row["epoch"],
            run.steps_per_epoch,
            state.loop_seconds / 60,
            state.best_epoch,
        )
    elif stop:
        run.reporter.info(
            "early stop: %s has not improved for %d epochs; restoring epoch %d",
            config.monitor,
            config.early_stop_patience,
            state.best_epoch,
        )
    step_seconds = config.global_batch_size / row["images_per_second"] if row["images_per_second"] > 0 else 0.0
    paced = run.watcher.pace(run.dist, step_seconds)
    if paced:
        run.reporter.info("%s", paced)
    notice = run.watcher.poll(state.epoch * run.steps_per_epoch, every_worker_here=True)
    if notice is not None and notice.exit_signal is None:  # a Ray notice: the epoch's checkpoint is written
        run.reporter.info("%s: the checkpoint of epoch %d is written; training on", notice.why, state.epoch)
        storage.retry_not_after(None)
    elif notice is not None and not (stop or state.out_of_time):
        exit_now(run, notice, f"checkpoint of epoch {state.epoch} written")
    return stop or state.out_of_time


def save_and_report(run: Run, metrics: dict) -> None:
    """The chief writes the epoch's checkpoint; every worker reports to the session."""
    state = run.state
    # best.npz unless the checkpoint's own weights are the best (mid-epoch they never are)
    best = run.best_weights if state.best_epoch != state.epoch or state.step else None
    directory = run.reporter.checkpoint(
        lambda d: checkpoint.save(
            d,
            model=run.model,
            optimizer=run.optimizer,
            loop=dataclasses.asdict(state),
            config_json=run.config.to_json(),
            best=best,
        )
    )
    try:
        run.session.report(metrics, directory)
    finally:
        run.reporter.done_with(directory)


def release_inputs(run: Run, phase: Phase | None) -> None:
    """Drops the phase's input iterators, and says so when that is slow: an iterator's destructor
    waits for tf.data's autotuning thread, which sleeps for its optimization period (it doubles
    up to a minute on a long run) before it sees the cancellation."""
    if phase is None:
        return
    slow = threading.Timer(
        2.0, run.reporter.info, ("stopping the input pipeline (tf.data's autotuner can take up to a minute) ...",)
    )
    slow.daemon = True
    slow.start()
    start = time.perf_counter()
    phase.train_batches = phase.val_batches = None
    gc.collect()
    slow.cancel()
    if time.perf_counter() - start > 2.0:
        run.reporter.info("input pipeline stopped in %.0f s", time.perf_counter() - start)


def report_nothing_left(run: Run) -> None:
    state, config = run.state, run.config
    run.reporter.info(
        "nothing to train: %d of %d epochs already done%s",
        state.epoch,
        config.epochs,
        f" and train_minutes={config.train_minutes:g} used up" if state.out_of_time else "",
    )
    if state.metrics:  # a rerun (e.g. a resumed Tune trial) still reports where it stands
        run.session.report(
            dict(state.metrics, best_val_accuracy=state.best_val_accuracy, stopped_early=state.stopped_early), None
        )


def result(run: Run) -> FitResult:
    """The chief gets a strategy-free copy holding the best weights, for evaluation and export."""
    state, trained = run.state, run.state.epoch - run.first_epoch
    if not run.dist.chief:
        return FitResult(state, None, run.dist.rank, run.dataset, trained, run.config)
    final = model_lib.build(run.config)
    values = run.best_weights if run.best_weights is not None else snapshot(run.model)
    for v, a in zip(final.variables, values):
        v.assign(a)
    return FitResult(state, final, run.dist.rank, run.dataset, trained, run.config)
