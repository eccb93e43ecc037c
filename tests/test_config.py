import json
import os

import pytest

from fer_dist import config as C
from fer_dist.errors import UserError


def test_seed_preset_is_the_seed_recipe():
    c = C.resolve("seed")
    assert (c.backbone, c.weights, c.freeze_layers) == ("resnet50", "imagenet", 143)
    assert c.dropout == 0.5 and c.optimizer == "adam" and c.decay_factor == 0.9
    assert c.early_stop_patience > 0 and c.global_batch_size <= 64


def test_default_preset_is_demo_on_builtin_data():
    c = C.resolve(None)
    assert c == C.resolve("demo")
    assert c.data == "builtin" and c.backbone == "compact"


def test_overrides_are_typed():
    c = C.resolve("seed", {"dropout": "0.3", "head_units": "256,128", "deterministic": "true", "epochs": "4"})
    assert c.dropout == 0.3 and c.head_units == (256, 128) and c.deterministic is True and c.epochs == 4


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"dropuot": "0.3"}, "unknown config key 'dropuot'"),
        ({"epochs": "ten"}, "epochs='ten': expected an integer"),
        ({"epochs": "-1"}, "epochs=-1: must be >= 1"),
        ({"train_minutes": "-5"}, "train_minutes=-5.0: must be >= 0"),
        ({"calibrate_batchnorm": "-1"}, "calibrate_batchnorm=-1: must be >= 0"),
        ({"precise_bn": "-3"}, "precise_bn=-3: must be >= 0"),
        ({"train_minutes": "soon"}, "train_minutes='soon': expected"),
        ({"dropout": "1.0"}, "dropout=1.0: must be in [0, 1)"),
        ({"deterministic": "maybe"}, "expected true or false"),
        ({"backbone": "vgg"}, "backbone='vgg'"),
        ({"head_units": "64,x"}, "comma-separated integers"),
        ({"image_size": "20"}, "image_size=20"),
        ({"decay_factor": "0"}, "decay_factor=0.0"),
        ({"adam_variance": "still"}, "adam_variance='still': expected one of running, frozen"),
        ({"adam_variance": "frozen", "optimizer": "sgd"}, "adam_variance=frozen: needs optimizer=adam"),
        ({"adam_variance": "frozen", "weight_decay": "0.01"}, "without weight_decay"),
        ({"adam_variance": "frozen", "powersgd_start_step": "0"}, "needs powersgd_start_step >= 1"),
    ],
)
def test_bad_overrides_name_the_key(overrides, needle):
    with pytest.raises(UserError) as e:
        C.resolve("seed", overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_preset():
    with pytest.raises(UserError, match="--preset 'best-ever': unknown preset"):
        C.resolve("best-ever")


def test_parse_overrides():
    assert C.parse_overrides(["a=1", " b = x,y "]) == {"a": "1", "b": "x,y"}
    with pytest.raises(UserError, match="expected key=value"):
        C.parse_overrides(["novalue"])


def test_json_round_trip_and_config_file(tmp_path):
    c = C.resolve("seed", {"dropout": "0.25", "head_units": "64"})
    assert C.TrainConfig.from_json(c.to_json()) == c
    f = tmp_path / "best_config.json"
    f.write_text(json.dumps({"dropout": 0.1, "global_batch_size": 16}))
    got = C.resolve("seed", {"epochs": "3"}, config_file=str(f))
    assert (got.dropout, got.global_batch_size, got.epochs, got.freeze_layers) == (0.1, 16, 3, 143)


def test_bad_config_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"dropout": 0.1,\n "nope": 1}')
    with pytest.raises(UserError, match="unknown config key 'nope'"):
        C.resolve("seed", config_file=str(f))
    f.write_text('{"dropout": 0.1,\n oops}')
    with pytest.raises(UserError, match="c.json line 2: not valid JSON"):
        C.resolve("seed", config_file=str(f))
    with pytest.raises(UserError, match="no such file"):
        C.resolve("seed", config_file=str(tmp_path / "missing.json"))


def test_config_is_frozen():
    c = C.resolve("seed")
    with pytest.raises(Exception):
        c.dropout = 0.1  # type: ignore[misc]


NEW_FIELDS = {
    "nesterov": True,
    "lr_schedule": "plateau",
    "warmup_epochs": 0,
    "class_weighting": "none",
    "augment_flip": False,
    "augment_shift": 0.0,
    "augment_zoom": 0.0,
    "augment_rotation": 0.0,
    "augment_erasing": 0.0,
    "mixup_alpha": 0.0,
    "eval_tta": "none",
    "train_minutes": 0.0,
    "calibrate_batchnorm": 0,
    "precise_bn": 0,
}


@pytest.mark.parametrize("preset", ["seed", "smoke", "demo", "quick"])
def test_new_fields_default_to_the_old_behaviour_in_old_presets(preset):
    c = C.resolve(preset)
    assert {k: getattr(c, k) for k in NEW_FIELDS} == NEW_FIELDS
    assert C.image_augmentations(c) == []
    # A config.json written before these fields existed still loads, with them at their defaults.
    old = {k: v for k, v in c.to_dict().items() if k not in NEW_FIELDS}
    assert C.TrainConfig.from_json(json.dumps(old)) == c


def test_finetune_preset():
    c = C.resolve("finetune")
    assert (c.backbone, c.weights, c.freeze_layers, c.train_batchnorm) == ("resnet50", "imagenet", 175, False)
    assert (c.unfreeze_epoch, c.unfreeze_to, c.unfreeze_lr_factor) == (2, 0, 0.1)  # head warm-up, then all
    assert (c.optimizer, c.nesterov, c.momentum, c.learning_rate, c.weight_decay) == ("sgd", True, 0.9, 0.01, 1e-4)
    assert c.lr_schedule == "plateau" and c.label_smoothing == 0.1 and c.image_size >= 96
    assert c.augment_flip and c.augment_shift > 0 and c.augment_rotation > 0 and c.eval_tta == "tencrop"
    assert C.image_augmentations(c) and "augment_flip=true" in C.describe(c)


def test_best_preset_is_the_seed_plus_cache_friendly_choices():
    from fer_dist import features

    best, seed = C.resolve("best"), C.resolve("seed")
    changed = {k for k, v in best.to_dict().items() if seed.to_dict()[k] != v}
    assert changed == {"precise_bn", "label_smoothing", "augment_flip", "eval_tta"}
    assert best.precise_bn > 0 and best.augment_flip and best.label_smoothing == 0.1 and best.eval_tta == "flip"
    assert features.config_reason(best) is None  # flips are cached: the cache stays on


def test_augmentation_and_schedule_overrides_are_typed():
    c = C.resolve(
        "smoke",
        {
            "augment_flip": "on",
            "augment_rotation": "10",
            "mixup_alpha": "0.2",
            "lr_schedule": "cosine",
            "warmup_epochs": "2",
            "nesterov": "false",
        },
    )
    assert c.augment_flip is True and c.augment_rotation == 10.0 and c.mixup_alpha == 0.2
    assert (c.lr_schedule, c.warmup_epochs, c.nesterov) == ("cosine", 2, False)
    assert C.image_augmentations(c) == ["augment_flip=true", "augment_rotation=10"]


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"augment_shift": "0.7"}, "augment_shift=0.7: must be in [0, 0.5]"),
        ({"augment_shift": "-0.1"}, "augment_shift=-0.1"),
        ({"augment_zoom": "1"}, "augment_zoom=1.0: must be in [0, 1)"),
        ({"augment_rotation": "200"}, "augment_rotation=200.0"),
        ({"augment_erasing": "1.5"}, "augment_erasing=1.5: must be in [0, 1]"),
        ({"mixup_alpha": "-1"}, "mixup_alpha=-1.0"),
        ({"augment_flip": "sometimes"}, "augment_flip='sometimes': expected true or false"),
        ({"class_weighting": "inverse"}, "class_weighting='inverse': expected one of none, balanced"),
        ({"lr_schedule": "step"}, "lr_schedule='step': expected one of plateau, cosine"),
        ({"warmup_epochs": "-1"}, "warmup_epochs=-1: must be >= 0"),
        ({"eval_tta": "fivecrop"}, "eval_tta='fivecrop'"),
    ],
)
def test_bad_augmentation_and_schedule_values_name_the_field(overrides, needle):
    with pytest.raises(UserError) as e:
        C.resolve("smoke", overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_local_paths_are_made_absolute_for_ray_workers(tmp_path, monkeypatch):
    from fer_dist import experiment, storage

    monkeypatch.chdir(tmp_path)
    c = C.resolve("demo", {"data": "data/fer.csv", "weights": "w.weights.h5", "feature_cache_dir": "~/cache"})
    a = experiment.absolute_paths(c)
    assert a.data == str(tmp_path / "data" / "fer.csv")
    assert a.weights == str(tmp_path / "w.weights.h5")
    assert a.feature_cache_dir == os.path.expanduser("~/cache")
    kept = experiment.absolute_paths(C.resolve("demo", {"data": "gs://b/fer.csv"}))
    assert kept.data == "gs://b/fer.csv" and kept.weights == "none" and kept.feature_cache_dir == ""
    assert experiment.absolute_paths(C.resolve("seed")).weights == "imagenet"
    assert storage.absolute("runs") == str(tmp_path / "runs") and storage.absolute("gs://b/x") == "gs://b/x"


def test_docs_config_md_is_the_generated_table_of_every_key():
    """docs/config.md lists every key with its default and comment: regenerate it with
    `python -m fer_dist.config_docs --write` when the config changes."""
    from fer_dist import config_docs

    with open(config_docs.path()) as f:
        assert f.read() == config_docs.markdown(), "docs/config.md is stale: python -m fer_dist.config_docs --write"
    for key in C.field_names():
        assert f"| `{key}` |" in config_docs.markdown()


def test_a_mistyped_key_gets_a_suggestion():
    with pytest.raises(UserError, match=r"unknown config key 'dropuot'; did you mean dropout\?"):
        C.resolve("smoke", {"dropuot": "0.3"})
    with pytest.raises(UserError, match=r"unknown config key 'zzz'; the keys: docs/config.md"):
        C.resolve("smoke", {"zzz": "1"})
