"""One typed, frozen training config; its named presets are data in `fer_dist/presets.py`.

    python jobs/train.py --preset seed --set dropout=0.4 --set global_batch_size=64

`resolve(preset, overrides, config_file)` is the only way a run gets its config:
the preset's values, then the fields of a saved `config.json` (if given), then the
`--set key=value` overrides, then validation. Unknown keys and ill-typed values
raise `UserError` naming the key. The resolved config is saved as `config.json`
beside every run and inside every checkpoint (`to_json` / `from_json`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fer_dist import monitor as monitor_lib
from fer_dist import presets
from fer_dist.errors import UserError
from fer_dist.values import coerce, parse_overrides

BACKBONES = ("resnet50", "compact")
OPTIMIZERS = ("adam", "sgd")
ADAM_VARIANCES = ("running", "frozen")
POOLINGS = ("flatten", "avg")
FEATURE_DTYPES = ("float16", "float32")
ALLREDUCE_DTYPES = ("float32", "bfloat16", "float16")
LR_SCHEDULES = ("plateau", "cosine")
CLASS_WEIGHTINGS = ("none", "balanced")
TTA_MODES = ("none", "flip", "tencrop")
DEDUPE_MODES = ("none", "eval")  # data.drop_eval_duplicates
LABEL_MODES = ("majority", "probability")  # fer_dist/ferplus.py
CHANNEL_MODES = ("auto", "gray", "rgb")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run, with its default. Field names are flag names."""

    # --- data -----------------------------------------------------------------
    data: str = "builtin"  # "builtin", a FER-2013 CSV (.csv/.csv.gz, path or gs://), or an image folder
    builtin_size: int = 12000  # images of the built-in synthetic set (train+val+test)
    val_fraction: float = 0.1  # carved from train (stratified) when the data has no PublicTest
    skip_bad_rows: bool = False  # skip malformed CSV rows / unreadable images instead of failing
    # Decode the data once per machine into ~/.cache/fer_dist/decoded and read it memory-mapped
    # (fer_dist/decoded.py); false: decode into memory every run.
    data_cache: bool = True
    # The classes, label i = class_names[i]: filled from the data when a run starts (saved in its
    # config.json); a run refuses data whose classes differ. () = whatever the data has.
    class_names: tuple[str, ...] = ()
    # The faces' colour: "auto" keeps colour when the data has it (RGB faces, gray otherwise;
    # filled in, like class_names, when a run starts), "gray" or "rgb" force one.
    channels: str = "auto"
    # "eval": drop the training faces identical (pixel for pixel) to a val or test face; on
    # FER-2013, 280 PublicTest faces are also training faces (`jobs/data.py inspect`). "none": keep all.
    dedupe: str = "none"
    # FER+ (fer_dist/ferplus.py): a votes file (fer2013new.csv) for a FER-2013 `data` CSV,
    # row by row. label_mode "majority": each face's majority class (faces without one
    # dropped); "probability": train on each face's vote distribution (val/test: majority).
    labels: str = ""
    label_mode: str = "majority"
    contempt: bool = True  # FER+'s eighth class; false: seven classes, contempt faces dropped

    # --- model ----------------------------------------------------------------
    backbone: str = "resnet50"  # "resnet50" (the ResNet50 transfer recipes) or "compact" (small CNN for CPU demos)
    image_size: int = 48  # input side in pixels; faces are resized inside the pipeline
    weights: str = "imagenet"  # "imagenet", "none", or a path to a Keras weights file
    freeze_layers: int = 143  # the first N backbone layers are frozen (BatchNorm in inference mode)
    train_batchnorm: bool = True  # BatchNorm past freeze_layers trains (False: every BatchNorm stays in inference mode)
    # Before training, set every BatchNorm's moving statistics (frozen ones too) from this many
    # training images (model.calibrate_batchnorm): a data-dependent init for weights=none,
    # AdaBN for pretrained weights. 0 = off (the seed recipe).
    calibrate_batchnorm: int = 0
    # Before every validation, recompute the moving statistics of the BatchNorm layers that
    # train from this many training images under the current weights (PreciseBN); 0 = off.
    precise_bn: int = 0
    head_pooling: str = "flatten"  # how the backbone's feature map enters the head
    head_units: tuple[int, ...] = (1024, 512)  # Dense(he_uniform) + BatchNorm + ReLU + Dropout per entry
    dropout: float = 0.5  # dropout rate after each head layer

    # --- optimisation -----------------------------------------------------------
    optimizer: str = "adam"  # adam or sgd
    learning_rate: float = 1e-3  # the starting learning rate (phase 1)
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only: Nesterov momentum
    weight_decay: float = 0.0  # decoupled weight decay (AdamW / SGDW); 0 = off
    lr_schedule: str = (
        "plateau"  # "plateau": decay on `monitor` plateaus; "cosine": per-step cosine decay to min_learning_rate
    )
    warmup_epochs: int = 0  # linear learning-rate warm-up over the first N epochs (per step; either schedule)
    # Two phases: epochs 1..unfreeze_epoch train with `freeze_layers` frozen (e.g. the head alone
    # on a frozen trunk), then only the first `unfreeze_to` layers stay frozen and the learning
    # rate is multiplied by `unfreeze_lr_factor`. BatchNorm layers that phase 1 froze stay frozen
    # (inference mode). 0 = one phase.
    unfreeze_epoch: int = 0
    unfreeze_to: int = 0  # phase 2: layers before this stay frozen
    unfreeze_lr_factor: float = 0.1  # phase 2: the learning rate is multiplied by this
    # The one metric "best" goes by (fer_dist/monitor.py): val_loss (lowest) or val_accuracy
    # (highest). It drives LR plateaus, early stopping, the weights restored and exported at the
    # end, which checkpoints are kept, and Tune's ranking.
    monitor: str = "val_loss"
    decay_factor: float = 0.9  # learning rate *= decay_factor when `monitor` plateaus (lr_schedule=plateau)
    decay_patience: int = 2  # epochs without `monitor` improving before a decay
    min_learning_rate: float = 1e-6  # the floor of the plateau decay and the end of the cosine
    early_stop_patience: int = 6  # epochs without `monitor` improving before stopping (0: never)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0 = off)
    epochs: int = 30  # at most this many epochs (early stopping may end sooner)
    steps_per_epoch: int = 0  # cap on training steps per epoch for quick looks; 0 = the full epoch
    # Wall-clock budget of the training loop (train steps + validation; not the feature-cache
    # build or the final test): when it runs out, the epoch ends at that step, is validated and
    # checkpointed, and training stops (a resumed run gets what is left). 0 = no budget.
    train_minutes: float = 0.0
    global_batch_size: int = 32  # summed over all workers; each gets global_batch_size / num_workers
    class_weighting: str = "none"  # "balanced": per-example loss weights from inverse train-class frequencies (mean 1)

    # --- augmentation (training only; in-graph, fer_dist/augment.py) ---------------------------
    augment_flip: bool = False  # random horizontal flip
    augment_shift: float = 0.0  # random translation, up to this fraction of the side in x and y
    augment_zoom: float = 0.0  # random scale in [1 - z, 1 + z] about the centre (>1: zoom in, a random-resized crop)
    augment_rotation: float = 0.0  # random rotation, up to this many degrees either way
    augment_erasing: float = 0.0  # probability of erasing one random rectangle (Zhong et al. 2017)
    mixup_alpha: float = 0.0  # mixup with lam ~ Beta(alpha, alpha) per batch (0 = off)
    eval_tta: str = "none"  # test-time augmentation of the final evaluation: none, flip or tencrop

    # --- runtime ----------------------------------------------------------------
    seed: int = 0  # weights, data order, augmentation and the val split follow it
    deterministic: bool = (
        True  # op determinism: the same seed gives the same numbers (about 6% of img/s on the demo here)
    )
    mixed_precision: bool = False  # mixed_float16 compute, float32 logits, dynamic loss scaling (GPU)
    jit_compile: bool = False  # XLA-compile the train step
    feature_cache: bool = (
        True  # resnet50 with frozen layers: train the remainder on cached prefix features (fer_dist/features.py)
    )
    feature_cache_dir: str = ""  # where cached features go (a directory or gs:// URI); "" = ~/.cache/fer_dist/features
    feature_dtype: str = "float16"  # storage dtype of cached features: float16 (half the memory) or float32 (exact)
    feature_cache_max_gb: float = 4.0  # cache size cap in GB (10**9 bytes); least recently used entries go (0 = no cap)
    keep_checkpoints: int = 2  # the best K by `monitor` are kept, plus the latest
    # Step checkpoints inside an epoch (0: off): what a worker-group restart (a lost node, an
    # elastic resize) goes back to. Minutes are checked at the vote steps (vote_every_steps).
    checkpoint_every_steps: int = 0  # a step checkpoint every N steps
    checkpoint_every_minutes: float = 0.0  # a step checkpoint every N minutes
    # Multi-worker: every N steps the workers vote once on the time budget; no other collective
    # runs between gradient all-reduces but Ray's preemption barrier (fer_dist/steps.py).
    vote_every_steps: int = 20
    # On Ray: how often (seconds of training) the workers ask Ray for a preemption notice (a
    # barrier), turned into steps at each epoch's end from the measured step time (the first
    # epoch: every vote_every_steps steps); on one, a checkpoint at that step.
    preemption_poll_seconds: float = 10.0
    allreduce_dtype: str = "float32"  # gradients cross the network as float32, bfloat16 or float16
    allreduce_pack_mb: float = 0.0  # MWMS bytes_per_pack in MiB (0: all gradients in one pack)
    # Several workers: PowerSGD sends each gradient matrix as two rank-R factors, with error
    # feedback (fer_dist/compression.py); the other gradients go whole, in allreduce_dtype.
    gradient_compression: str = "none"  # none | powersgd
    powersgd_rank: int = 4  # R: values sent per matrix (n + m) * R instead of n * m
    powersgd_start_step: int = 200  # optimizer steps all-reduced uncompressed first (a warm-up: 50 of them gave +1.0 point at 300 steps, docs/scaling.md)
    # Adam's second moment: "running" (Adam), or "frozen" from optimizer step powersgd_start_step
    # on (1-bit Adam's remedy for compressed gradients, Tang et al. 2021; docs/scaling.md).
    adam_variance: str = "running"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["head_units"] = list(self.head_units)
        d["class_names"] = list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "config.json") -> TrainConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{source} line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{source}: expected a JSON object of config fields")
        return validate(replace(cls(), raw, source=source))

    def replace(self, **changes: Any) -> TrainConfig:
        return validate(replace(self, changes))

    @property
    def classes(self) -> tuple[str, ...]:
        """The run's class names: its data's, or FER-2013's seven for a config that names none
        (runs from before `class_names` was saved)."""
        from fer_dist import EMOTIONS

        return self.class_names or EMOTIONS

    @property
    def input_channels(self) -> str:
        """The faces a trained run takes: "rgb", or "gray" (also for runs from before `channels`)."""
        return "rgb" if self.channels == "rgb" else "gray"


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def field_types() -> dict[str, Any]:
    """Each field's type (bool, int, float, str or tuple[int, ...]), by field name."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def replace(base: TrainConfig, changes: Mapping[str, Any], source: str = "") -> TrainConfig:
    """Applies `changes` (typed or string values) to `base`; unknown keys are errors."""
    types = field_types()
    coerced = {}
    for key, value in changes.items():
        if key not in types:
            where = f"{source}: " if source else ""
            close = difflib.get_close_matches(key, list(types), n=3, cutoff=0.6)
            hint = (
                f"did you mean {' or '.join(close)}?"
                if close
                else "the keys: docs/config.md (python -m fer_dist.config_docs)"
            )
            raise UserError(f"{where}unknown config key {key!r}; {hint}")
        coerced[key] = coerce(key, value, types[key], source)
    return dataclasses.replace(base, **coerced)


def validate(c: TrainConfig) -> TrainConfig:
    """Range checks. Each message names the field (which is also the --set key / flag)."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(msg)

    need(c.backbone in BACKBONES, f"backbone={c.backbone!r}: expected one of {', '.join(BACKBONES)}")
    need(c.optimizer in OPTIMIZERS, f"optimizer={c.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    need(c.head_pooling in POOLINGS, f"head_pooling={c.head_pooling!r}: expected one of {', '.join(POOLINGS)}")
    need(c.epochs >= 1, f"epochs={c.epochs}: must be >= 1")
    need(c.steps_per_epoch >= 0, f"steps_per_epoch={c.steps_per_epoch}: must be >= 0 (0 = full epoch)")
    need(c.train_minutes >= 0, f"train_minutes={c.train_minutes}: must be >= 0 (0 = no budget)")
    need(c.calibrate_batchnorm >= 0, f"calibrate_batchnorm={c.calibrate_batchnorm}: must be >= 0 (0 = off)")
    need(c.precise_bn >= 0, f"precise_bn={c.precise_bn}: must be >= 0 (0 = off)")
    need(c.global_batch_size >= 1, f"global_batch_size={c.global_batch_size}: must be >= 1")
    need(0.0 <= c.dropout < 1.0, f"dropout={c.dropout}: must be in [0, 1)")
    need(c.learning_rate > 0, f"learning_rate={c.learning_rate}: must be > 0")
    need(0.0 < c.decay_factor <= 1.0, f"decay_factor={c.decay_factor}: must be in (0, 1]")
    need(
        c.monitor in monitor_lib.METRICS,
        f"monitor={c.monitor!r}: expected one of {', '.join(monitor_lib.METRICS)}",
    )
    need(c.decay_patience >= 1, f"decay_patience={c.decay_patience}: must be >= 1")
    need(c.early_stop_patience >= 0, f"early_stop_patience={c.early_stop_patience}: must be >= 0")
    need(c.min_learning_rate >= 0, f"min_learning_rate={c.min_learning_rate}: must be >= 0")
    need(0.0 <= c.label_smoothing < 1.0, f"label_smoothing={c.label_smoothing}: must be in [0, 1)")
    need(c.weight_decay >= 0, f"weight_decay={c.weight_decay}: must be >= 0")
    need(0.0 <= c.momentum < 1.0, f"momentum={c.momentum}: must be in [0, 1)")
    need(0.0 < c.val_fraction < 1.0, f"val_fraction={c.val_fraction}: must be in (0, 1)")
    need(c.builtin_size >= 70, f"builtin_size={c.builtin_size}: must be >= 70 (10 per class)")
    need(c.keep_checkpoints >= 1, f"keep_checkpoints={c.keep_checkpoints}: must be >= 1")
    need(c.vote_every_steps >= 1, f"vote_every_steps={c.vote_every_steps}: must be >= 1")
    need(c.preemption_poll_seconds > 0, f"preemption_poll_seconds={c.preemption_poll_seconds}: must be > 0")
    need(c.checkpoint_every_steps >= 0, f"checkpoint_every_steps={c.checkpoint_every_steps}: must be >= 0")
    need(c.checkpoint_every_minutes >= 0, f"checkpoint_every_minutes={c.checkpoint_every_minutes}: must be >= 0")
    need(
        c.allreduce_dtype in ALLREDUCE_DTYPES,
        f"allreduce_dtype={c.allreduce_dtype!r}: expected one of {', '.join(ALLREDUCE_DTYPES)}",
    )
    need(c.allreduce_pack_mb >= 0, f"allreduce_pack_mb={c.allreduce_pack_mb}: must be >= 0")
    need(
        c.gradient_compression in ("none", "powersgd"),
        f"gradient_compression={c.gradient_compression!r}: expected one of none, powersgd",
    )
    need(c.powersgd_rank >= 1, f"powersgd_rank={c.powersgd_rank}: must be >= 1")
    need(c.powersgd_start_step >= 0, f"powersgd_start_step={c.powersgd_start_step}: must be >= 0")
    need(
        c.adam_variance in ADAM_VARIANCES,
        f"adam_variance={c.adam_variance!r}: expected one of {', '.join(ADAM_VARIANCES)}",
    )
    if c.adam_variance == "frozen":
        need(
            c.optimizer == "adam" and not c.weight_decay,
            f"adam_variance=frozen: needs optimizer=adam without weight_decay (have {c.optimizer}, "
            f"weight_decay={c.weight_decay:g})",
        )
        need(
            c.powersgd_start_step >= 1,
            "adam_variance=frozen: needs powersgd_start_step >= 1 (the steps that estimate the variance it holds)",
        )
    need(c.freeze_layers >= 0, f"freeze_layers={c.freeze_layers}: must be >= 0")
    need(c.unfreeze_epoch >= 0, f"unfreeze_epoch={c.unfreeze_epoch}: must be >= 0 (0 = one phase)")
    if c.unfreeze_epoch:
        need(
            c.unfreeze_epoch < c.epochs,
            f"unfreeze_epoch={c.unfreeze_epoch}: must be < epochs={c.epochs} (phase 2 starts after it)",
        )
        need(
            0 <= c.unfreeze_to < c.freeze_layers,
            f"unfreeze_to={c.unfreeze_to}: must be in [0, freeze_layers={c.freeze_layers}) (layers frozen in phase 2)",
        )
    need(0.0 < c.unfreeze_lr_factor <= 1.0, f"unfreeze_lr_factor={c.unfreeze_lr_factor}: must be in (0, 1]")
    need(all(u >= 1 for u in c.head_units), f"head_units={list(c.head_units)}: every width must be >= 1")
    need(
        not c.class_names or (len(c.class_names) >= 2 and len(set(c.class_names)) == len(c.class_names)),
        f"class_names={','.join(c.class_names)}: at least 2 names, each once",
    )
    min_size = 32 if c.backbone == "resnet50" else 16
    need(
        min_size <= c.image_size <= 512,
        f"image_size={c.image_size}: must be in [{min_size}, 512] for backbone {c.backbone}",
    )
    need(
        c.feature_dtype in FEATURE_DTYPES,
        f"feature_dtype={c.feature_dtype!r}: expected one of {', '.join(FEATURE_DTYPES)}",
    )
    need(c.feature_cache_max_gb >= 0, f"feature_cache_max_gb={c.feature_cache_max_gb}: must be >= 0 (0 = no cap)")
    need(c.weights.strip() != "", "weights='': expected imagenet, none or a path to a weights file")
    need(
        c.lr_schedule in LR_SCHEDULES,
        f"lr_schedule={c.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}",
    )
    need(c.warmup_epochs >= 0, f"warmup_epochs={c.warmup_epochs}: must be >= 0")
    need(c.channels in CHANNEL_MODES, f"channels={c.channels!r}: expected one of {', '.join(CHANNEL_MODES)}")
    need(
        c.label_mode in LABEL_MODES,
        f"label_mode={c.label_mode!r}: expected one of {', '.join(LABEL_MODES)}",
    )
    need(
        c.dedupe in DEDUPE_MODES,
        f"dedupe={c.dedupe!r}: expected one of {', '.join(DEDUPE_MODES)}",
    )
    need(
        c.class_weighting in CLASS_WEIGHTINGS,
        f"class_weighting={c.class_weighting!r}: expected one of {', '.join(CLASS_WEIGHTINGS)}",
    )
    need(
        0.0 <= c.augment_shift <= 0.5, f"augment_shift={c.augment_shift}: must be in [0, 0.5] (a fraction of the side)"
    )
    need(0.0 <= c.augment_zoom < 1.0, f"augment_zoom={c.augment_zoom}: must be in [0, 1)")
    need(0.0 <= c.augment_rotation <= 180.0, f"augment_rotation={c.augment_rotation}: must be in [0, 180] degrees")
    need(0.0 <= c.augment_erasing <= 1.0, f"augment_erasing={c.augment_erasing}: must be in [0, 1] (a probability)")
    need(0.0 <= c.mixup_alpha <= 10.0, f"mixup_alpha={c.mixup_alpha}: must be in [0, 10] (0 = off)")
    need(c.eval_tta in TTA_MODES, f"eval_tta={c.eval_tta!r}: expected one of {', '.join(TTA_MODES)}")
    return c


def image_augmentations(c: TrainConfig) -> list[str]:
    """The image augmentations a config turns on, as `field=value` strings ([] when none)."""
    on = []
    if c.augment_flip:
        on.append("augment_flip=true")
    for name in ("augment_shift", "augment_zoom", "augment_rotation", "augment_erasing"):
        if getattr(c, name) > 0:
            on.append(f"{name}={getattr(c, name):g}")
    return on


def resolve(
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
) -> TrainConfig:
    """preset -> config file -> overrides -> validation. The one place a run's config is made."""
    name = preset or presets.DEFAULT_PRESET
    if name not in presets.PRESETS:
        raise UserError(f"--preset {name!r}: unknown preset (known: {', '.join(presets.PRESETS)})")
    config = replace(TrainConfig(), presets.PRESETS[name].fields, source=f"preset {name}")
    if config_file:
        from fer_dist import storage

        try:
            text = storage.read_text(config_file)
        except FileNotFoundError:
            raise UserError(f"--config {config_file}: no such file") from None
        except IsADirectoryError:
            raise UserError(f"--config {config_file}: is a directory, not a config.json") from None
        except UnicodeDecodeError:
            raise UserError(f"--config {config_file}: not a text file (expected a config.json)") from None
        raw = TrainConfig.from_json(text, source=config_file)
        config = replace(config, {k: getattr(raw, k) for k in _explicit_keys(text)}, source=config_file)
    if overrides:
        config = replace(config, overrides, source="--set")
    return validate(config)


def _explicit_keys(text: str) -> list[str]:
    return list(json.loads(text).keys())


def describe(config: TrainConfig) -> str:
    """A one-line summary for logs."""
    return (
        f"backbone={config.backbone} weights={config.weights} image_size={config.image_size} "
        f"freeze_layers={config.freeze_layers} head={list(config.head_units)} dropout={config.dropout} "
        f"{config.optimizer} lr={config.learning_rate:g} global_batch_size={config.global_batch_size} "
        f"epochs={config.epochs} monitor={config.monitor}"
        + (f" train_minutes={config.train_minutes:g}" if config.train_minutes else "")
        + (f" calibrate_batchnorm={config.calibrate_batchnorm}" if config.calibrate_batchnorm else "")
        + (f" precise_bn={config.precise_bn}" if config.precise_bn else "")
        + (f" lr_schedule={config.lr_schedule}" if config.lr_schedule != "plateau" else "")
        + (f" warmup_epochs={config.warmup_epochs}" if config.warmup_epochs else "")
        + (
            f" unfreeze_epoch={config.unfreeze_epoch} unfreeze_to={config.unfreeze_to}"
            f" unfreeze_lr_factor={config.unfreeze_lr_factor:g}"
            if config.unfreeze_epoch
            else ""
        )
        + (f" nesterov={str(config.nesterov).lower()}" if config.optimizer == "sgd" else "")
        + "".join(f" {a}" for a in image_augmentations(config))
        + (f" mixup_alpha={config.mixup_alpha:g}" if config.mixup_alpha > 0 else "")
        + (f" class_weighting={config.class_weighting}" if config.class_weighting != "none" else "")
        + (f" eval_tta={config.eval_tta}" if config.eval_tta != "none" else "")
    )


__all__ = [
    "TrainConfig",
    "resolve",
    "parse_overrides",
    "replace",
    "validate",
    "field_names",
    "field_types",
    "describe",
    "image_augmentations",
    "field",
]
