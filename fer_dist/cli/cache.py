"""See and empty the frozen-trunk feature cache (fer_dist/features.py).

\b
    python jobs/cache.py list              # entries, sizes, last use, total vs cap
    python jobs/cache.py clear 3f9a0c1e    # one entry (its key or a unique prefix)
    python jobs/cache.py clear             # every entry
    python jobs/cache.py list --dir gs://BUCKET/fer/features

--dir: the cache directory, a run's feature_cache_dir; default
~/.cache/fer_dist/features (what runs use when feature_cache_dir is unset).
Runs keep the cache under feature_cache_max_gb (default 4 GB) themselves by
deleting the least recently used entries; `list` compares the total with
that default, or with --max-gb.
"""

from __future__ import annotations

import time

import typer

from fer_dist import cli, logs

app = cli.App(help=__doc__)

DIR_HELP = "The cache directory (local or gs://); default ~/.cache/fer_dist/features."


def _root(directory: str | None) -> str:
    from fer_dist import features, storage

    return storage.absolute(directory) if directory else features.default_root()


def _row(e) -> list[str]:
    from fer_dist import features

    meta = e.meta
    splits = meta.get("splits", {})
    sizes = "/".join(str(splits[s]["size"]) for s in ("train", "val") if s in splits) or "?"
    source = meta.get("source") or meta.get("data") or "?"  # `data`: entries of cache version 1
    return [
        e.key,
        features.human_size(e.size),
        time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used)),
        f"{meta['image_size']} px" if "image_size" in meta else "?",
        meta.get("cut_layer", "?"),
        sizes,
        meta.get("stored_dtype", "?"),
        "yes" if features.FLIP_FILE in e.files else "no",
        source if e.complete else "(incomplete: no meta.json)",
    ]


@app.command("list", help="Each entry: key, size, last used, image size, cut, train/val images, dtype, flip, data.")
@cli.user_errors_exit
def list_command(
    directory: str | None = typer.Option(None, "--dir", metavar="DIR", help=DIR_HELP),
    max_gb: float | None = typer.Option(
        None, "--max-gb", help="The cap to compare with (default: feature_cache_max_gb's default)."
    ),
) -> None:
    from fer_dist import features
    from fer_dist.config import TrainConfig

    logs.setup_logging()
    root = _root(directory)
    cap = TrainConfig().feature_cache_max_gb if max_gb is None else max_gb
    if cap < 0:
        raise cli.UserError(f"--max-gb {cap:g}: must be >= 0 (0 = no cap)")
    entries = features.list_entries(root)
    header = ["key", "size", "last used", "image", "cut after", "train/val", "dtype", "flip", "data"]
    rows = [header] + [_row(e) for e in reversed(entries)]  # most recently used first
    if entries:
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    total = sum(e.size for e in entries)
    limit = f"cap {cap:g} GB (feature_cache_max_gb)" if cap > 0 else "no cap (feature_cache_max_gb=0)"
    print(f"total: {len(entries)} entries, {features.human_size(total)} in {root}; {limit}", flush=True)


@app.command("clear", help="Delete one entry (KEY, or a unique prefix of it), or every entry.")
@cli.user_errors_exit
def clear_command(
    key: str | None = typer.Argument(None, metavar="KEY", help="The entry's key (see `list`); omitted: every entry."),
    directory: str | None = typer.Option(None, "--dir", metavar="DIR", help=DIR_HELP),
) -> None:
    from fer_dist import features

    logs.setup_logging()
    root = _root(directory)
    removed = features.clear(root, key)
    for e in removed:
        print(f"deleted {e.key} ({features.human_size(e.size)})")
    freed = features.human_size(sum(e.size for e in removed))
    print(f"cleared {len(removed)} entries, {freed}, from {root}", flush=True)


if __name__ == "__main__":
    app()
