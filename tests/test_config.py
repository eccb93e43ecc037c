import json

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
        ({"dropout": "1.0"}, "dropout=1.0: must be in [0, 1)"),
        ({"deterministic": "maybe"}, "expected true or false"),
        ({"backbone": "vgg"}, "backbone='vgg'"),
        ({"head_units": "64,x"}, "comma-separated integers"),
        ({"image_size": "20"}, "image_size=20"),
        ({"decay_factor": "0"}, "decay_factor=0.0"),
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
