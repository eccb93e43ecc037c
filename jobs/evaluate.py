"""Score trained runs on any data: accuracy, macro-F1, per-class table, confusion matrix.

    python jobs/evaluate.py RUN_DIR --data ../shared/data/fer2013/fer2013.csv.gz --split val
    python jobs/evaluate.py RUN1 RUN2 RUN3 --data PATH          # ensemble: mean probabilities
    python jobs/evaluate.py RUN_DIR --data PATH --tta tencrop   # test-time augmentation: none | flip | tencrop

Results go to --output (default: RUN_DIR/evaluations/<data>-<split>/ of the first run):
metrics.json (with `accuracy` and the `tta` used), <split>_confusion.csv and .png.
Without --tta each run uses its config's `eval_tta` (none unless the run set it); with an
ensemble each model's TTA-averaged probabilities are averaged.
"""

from fer_dist.cli.evaluate import app

if __name__ == "__main__":
    app()
