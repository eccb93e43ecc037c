"""Batch inference across a Ray cluster: many image files -> Parquet, resumable.

    python jobs/predict.py gs://bucket/images/ --run RUN --workers 4 --output gs://bucket/emotions/

The images directly in the directory (sorted by name) are cut into shards of `--shard-files`
files. Ray Data runs one scorer per worker (`ShardScorer`: the run's model and the face
detector loaded once, on a GPU where the cluster has them); each shard goes through the one
inference path (`predict.score`: faces, model input, probabilities) and its rows land in
OUTPUT/part-<shard>.parquet, written whole (a temporary file and a rename; one upload on GCS).

Our own record of what is done is the part files themselves, named by shard (Ray Data's own
writers name files by uuid): run the same command again after a stop and only the shards
without a part are scored. OUTPUT/_batch.json names the job (source, run, options, the file
list's SHA-256): another job's --output is refused, and `complete` is set at the end. A worker
that dies mid-shard is restarted by Ray Data and its shard scored again (Ray Data's actors
restart and retry by default); the part is written once. A file that is not a readable image
gets a row saying so instead of stopping the job.

`pandas.read_parquet(OUTPUT)` reads every part (files starting with `_` are skipped).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fer_dist import storage
from fer_dist.errors import UserError

JOB_FILE = "_batch.json"
SHARD_FILES = 500
PROGRESS_EVERY_S = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    output: str
    shards: list[list[str]]  # the files of each shard, in order
    todo: list[int]  # the shards without a part yet
    job: dict  # what _batch.json says

    @property
    def files(self) -> int:
        return sum(len(s) for s in self.shards)


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def _job(path: str, run_dir: str, options, files: list[str], shard_files: int) -> dict:
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k in ("tta", "faces", "top_k")}
    return {
        "source": path,
        "run": run_dir,
        **settings,
        "files": len(files),
        "files_sha256": digest,
        "shard_files": shard_files,
    }


def plan(path: str, run_dir: str, options, output: str, shard_files: int = SHARD_FILES) -> Plan:
    """The shards and which are still to do; refuses an --output that holds something else."""
    from fer_dist import predict

    if shard_files < 1:
        raise UserError(f"--shard-files {shard_files}: expected 1 or more")
    if storage.exists(output) and not storage.is_dir(output):
        raise UserError(f"--output {output}: a file, not a directory")
    from fer_dist.video import is_video

    inputs = predict.input_paths(path)  # one listing (a gs:// listing is a request)
    files = [p for p in inputs if not is_video(p)]
    if not files:
        raise UserError(f"{path}: no images (the batch path reads images; score videos without --workers)")
    if len(inputs) > len(files):
        log.warning("batch: %d video(s) in %s left out (the batch path reads images)", len(inputs) - len(files), path)
    job = _job(path, run_dir, options, files, shard_files)
    shards = [files[i : i + shard_files] for i in range(0, len(files), shard_files)]
    record = storage.join(output, JOB_FILE)
    if storage.exists(record):
        saved = json.loads(storage.read_text(record))
        differs = [k for k in job if saved.get(k) != job[k]]
        if differs:
            raise UserError(
                f"--output {output}: holds the predictions of another job ({', '.join(differs)} differ: "
                f"{JOB_FILE} says {', '.join(f'{k}={saved.get(k)!r}' for k in differs[:2])}); pick another --output"
            )
        job = saved
    elif storage.exists(output) and storage.listdir(output):
        raise UserError(f"--output {output}: exists and is not a batch output (no {JOB_FILE}); pick another")
    else:
        storage.write_text(record, json.dumps(dict(job, complete=False), indent=2) + "\n")
    done = set(storage.listdir(output)) if storage.exists(output) else set()
    todo = [i for i in range(len(shards)) if part_name(i) not in done]
    return Plan(output, shards, todo, job)


class ShardScorer:
    """A Ray Data worker: loads the run once, then scores whole shards and writes their parts."""

    def __init__(self, run_dir: str, options: dict, output: str):
        from fer_dist import faces, inference, logs, predict

        logs.quiet_tensorflow_import()
        self.options = predict.Options(**options)
        self.output = output
        self.predictor = inference.Predictor.load(run_dir, self.options.tta)
        self.detector = None if self.options.faces == "whole" else faces.Detector()

    def __call__(self, batch: dict) -> dict:
        out = {"shard": [], "files": [], "faces": [], "seconds": []}
        for shard, paths in zip(batch["shard"], batch["paths"]):
            start = time.perf_counter()
            frame = score_shard(json.loads(paths), self.predictor, self.detector, self.options)
            write_part(storage.join(self.output, part_name(int(shard))), frame, self.predictor.config.classes)
            out["shard"].append(int(shard))
            out["files"].append(int(frame["image"].nunique()))
            out["faces"].append(int(frame["face"].notna().sum()))
            out["seconds"].append(time.perf_counter() - start)
        return {k: np.asarray(v) for k, v in out.items()}


def score_shard(paths: list[str], predictor, detector, options) -> pd.DataFrame:
    """The rows of these images (`predict.score`); an unreadable file gets a row with its note."""
    from fer_dist import predict

    readable, broken = [], []
    for path in paths:
        image = predict.open_photo(path)
        (broken if isinstance(image, str) else readable).append((path, image))
    frame = predict.score([predict.Source(p, i) for p, i in readable], predictor, detector, options, files=len(paths))
    if broken:
        notes = pd.DataFrame({"image": [p for p, _ in broken], "note": [f"unreadable: {e}" for _, e in broken]})
        notes = notes.reindex(columns=frame.columns).assign(emotion="", top="")
        frame = pd.concat([frame.astype({"emotion": object, "top": object}), notes], ignore_index=True)
        frame = frame.set_index("image").loc[paths].reset_index()  # the shard's file order
        frame = frame.astype({c: "Int64" for c in ("frame", "face", "x", "y", "width", "height")})
    return frame


def schema(classes: tuple[str, ...]):
    """One Arrow schema for every part, whatever rows it holds (all unreadable, none detected):
    predict's row columns, then one probability column per class of the run."""
    import pyarrow as pa

    from fer_dist import predict

    types = {"image": pa.string(), "note": pa.string(), "emotion": pa.string(), "top": pa.string()}
    types.update({c: pa.float64() for c in ("time_s", "score", "probability", *classes)})
    return pa.schema([(c, types.get(c, pa.int64())) for c in (*predict.ROW_COLUMNS, *classes)])


def write_part(uri: str, frame: pd.DataFrame, classes: tuple[str, ...]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, schema=schema(classes), preserve_index=False), buffer)
    storage.write_bytes(uri, buffer.getvalue())


def run(
    path: str,
    run_dir: str,
    options,
    output: str,
    workers: int,
    address: str | None = None,
    shard_files: int = SHARD_FILES,
    gpus_per_worker: float = 0,
) -> dict:
    """Scores every image of `path` on `workers` Ray workers into `output`; returns a summary."""
    from fer_dist import inference, predict, ray_cluster

    predict.check_options(options)
    if options.annotate or options.plot:
        raise UserError("--annotate and --plot are for the single-process path: leave out --workers")
    if workers < 1:
        raise UserError(f"--workers {workers}: expected 1 or more")
    if gpus_per_worker < 0:
        raise UserError(f"--gpus-per-worker {gpus_per_worker}: expected 0 or more")
    config, _ = inference.load_run(run_dir)  # a bad --run or a damaged model fails here, not in every worker
    predict.check_classes(config.classes, options.top_k)
    work = plan(path, run_dir, options, output, shard_files)
    done = len(work.shards) - len(work.todo)
    if done:
        log.info(
            "batch: %d of %d shards done already (their parts are in %s): scoring the other %d",
            done,
            len(work.shards),
            output,
            len(work.todo),
        )
    if work.todo:
        ray_cluster.ensure_ray(address, num_cpus=max(workers, 1) + 1)
        try:
            _score_on_ray(work, run_dir, options, workers, gpus_per_worker)
        except Exception as e:  # a UserError in a worker (a damaged model, a full disk): one error line here
            cause = _user_error_in(e)
            if cause is None:
                raise
            raise UserError(str(cause)) from None
    storage.write_text(storage.join(output, JOB_FILE), json.dumps(dict(work.job, complete=True), indent=2) + "\n")
    return {"files": work.files, "shards": len(work.shards), "scored_now": len(work.todo), "output": output}


def _user_error_in(exc: BaseException | None) -> UserError | None:
    """The UserError a Ray error carries (Ray keeps a worker's exception as its `cause`)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):
            return cause
        if type(exc) is UserError:
            return exc
        exc = exc.__cause__ or exc.__context__ or (cause if isinstance(cause, BaseException) else None)
    return None


def _score_on_ray(work: Plan, run_dir: str, options, workers: int, gpus_per_worker: float) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own progress lines instead (and not the notice that says so)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)  # "finished"
    items = [{"shard": i, "paths": json.dumps(work.shards[i])} for i in work.todo]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ShardScorer,
        fn_constructor_kwargs={"run_dir": run_dir, "options": dataclasses.asdict(options), "output": work.output},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),  # a dead worker restarts (Ray Data's default)
        **({"num_gpus": gpus_per_worker} if gpus_per_worker > 0 else {"num_cpus": 1}),
    )
    todo_files = sum(len(work.shards[i]) for i in work.todo)
    start, last, files, faces, shards = time.monotonic(), 0.0, 0, 0, 0
    first: tuple[float, int] | None = None  # (seconds, files) when the first shard was done: start-up over
    log.info("batch: %d files in %d shards on %d worker(s) -> %s", todo_files, len(items), workers, work.output)
    for row in dataset.iter_rows():
        shards, files, faces = shards + 1, files + int(row["files"]), faces + int(row["faces"])
        now = time.monotonic() - start
        first = first or (now, files)
        if now - last >= PROGRESS_EVERY_S or shards == len(items):
            last = now
            steady = f" ({(files - first[1]) / (now - first[0]):.1f} after the first shard)" if now > first[0] else ""
            log.info(
                "batch: %d/%d shards, %d/%d files, %d faces, %.1f images/s%s",
                shards,
                len(items),
                files,
                todo_files,
                faces,
                files / max(now, 1e-9),
                steady,
            )


__all__ = ["JOB_FILE", "SHARD_FILES", "Plan", "ShardScorer", "part_name", "plan", "run", "score_shard", "write_part"]
