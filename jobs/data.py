"""Look at a dataset before training on it: class counts and balance, duplicates, sample grids.

python jobs/data.py inspect DATA [--output DIR] [--format json]   # fer-data inspect ...
"""

from fer_dist.cli.data import app

if __name__ == "__main__":
    app()
