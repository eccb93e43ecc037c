"""Score trained runs on any data: accuracy, macro-F1, per-class table, confusion matrix.

    python jobs/evaluate.py RUN_DIR --data data/fer2013.csv --split val
    python jobs/evaluate.py RUN1 RUN2 RUN3 --data PATH          # ensemble: mean probabilities
    python jobs/evaluate.py RUN_DIR --data PATH --tta tencrop   # test-time augmentation: none | flip | tencrop

Results go to --output, or by default to RUN_DIR/evaluations/<data>-<split>[-tta_<tta>]
[-ensemble_<id>]/ of the first run: metrics.json, <split>_confusion.csv and .png. Nothing is
overwritten (a default directory in use becomes <dir>-2, ...). `python jobs/evaluate.py --help`
says the rest.
"""

from fer_dist.cli.evaluate import app

if __name__ == "__main__":
    app()
