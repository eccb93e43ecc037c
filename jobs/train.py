"""Train a facial-emotion model: one process, or N Ray Train workers.

python jobs/train.py                                  # demo: built-in data, CPU, a few minutes
python jobs/train.py --data data/fer2013.csv --preset seed
python jobs/train.py --workers 2                      # local Ray, 2 CPU workers
python jobs/train.py --resume --name NAME             # continue a run from its last checkpoint
"""

from fer_dist.cli.train import app

if __name__ == "__main__":
    app()
