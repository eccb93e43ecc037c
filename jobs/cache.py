"""See and empty the frozen-trunk feature cache (~/.cache/fer_dist/features, or --dir).

python jobs/cache.py list [--dir DIR]           # fer-cache list: entries, sizes, last use, total vs the cap
python jobs/cache.py clear [KEY] [--dir DIR]    # one entry, or every entry
"""

from fer_dist.cli.cache import app

if __name__ == "__main__":
    app()
