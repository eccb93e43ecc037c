"""Search hyper-parameters with Ray Tune; every trial is a distributed Ray Train run.

    python jobs/tune.py                                            # small local search, built-in data
    python jobs/tune.py --preset seed --data gs://BUCKET/fer2013.csv.gz --storage gs://BUCKET/fer/tune \\
        --workers-per-trial 2 --gpus-per-worker 1 --samples 16
    python jobs/tune.py --space dropout=0.3:0.6 --space global_batch_size=16,32 --space learning_rate=off
    python jobs/tune.py --resume --name NAME                       # continue a killed search

Results in <storage>/<name>/: results.csv, <metric>_curves.png, best_config.json, best_model/.
"""

from fer_dist.cli.tune import app

if __name__ == "__main__":
    app()
