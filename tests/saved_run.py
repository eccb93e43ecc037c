"""A finished-looking run directory without training: config.json + model.keras of an untrained model.

    run_dir = save_untrained_run(tmp_path / "run", eval_tta="flip")

For tests of what reads runs (evaluation, prediction): the model's weights are random (seeded),
its probabilities are as real as a trained model's.
"""

from __future__ import annotations

import os


def save_untrained_run(run_dir, preset: str = "smoke", **overrides) -> str:
    from fer_dist import config as C
    from fer_dist import model as model_lib

    config = C.resolve(preset, {k: str(v) for k, v in overrides.items()})
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write(config.to_json())
    import keras

    keras.utils.set_random_seed(config.seed)
    model_lib.build(config).save(os.path.join(run_dir, "model.keras"))
    return str(run_dir)
