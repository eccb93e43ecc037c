"""Real Ray Tune searches over Ray Train trials on CPU (ASHA, resume, results)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from fer_dist import storage
from fer_dist.errors import UserError
from tests import jobs_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SEARCH = [
    "--preset",
    "quick",
    "--set",
    "builtin_size=700",
    "--set",
    "epochs=3",
    "--samples",
    "4",
    "--grace-period",
    "1",
    "--reduction-factor",
    "2",
    "--max-concurrent",
    "2",
]


def tune_job(args: list[str], cwd: str = ROOT, log_file=None) -> subprocess.Popen:
    """The search as a user starts it: stdout piped; stderr (the log) with it, or to `log_file`."""
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "jobs", "tune.py"), *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if log_file is None else log_file,
        text=True,
        start_new_session=True,
    )


finish = jobs_helpers.finish


def results(search_uri: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(storage.read_text(storage.join(search_uri, "results.csv"))))


# ASHA must stop someone in the test below, whatever the timing: epoch-1 scores on 70 validation
# images are noise (a learning rate of 0.003 and one of 1e-9 score alike), so the grid runs two
# sane learning rates first and two that blow the validation loss up (to ~6,600 at 1.0, against
# ~2.4), and the two late trials start only when an early one has ended.
ASHA_GRID = ["--space", "learning_rate=grid:0.003,0.002,1.0,1.5", "--samples", "1"]


@pytest.mark.ray
def test_search_with_asha_runs_to_the_end_in_gcs(gcs_emulator, gcs_prefix, tmp_path):
    with open(tmp_path / "stderr.log", "w+") as log_file:
        args = [*TINY_SEARCH, *ASHA_GRID, "--storage", gcs_prefix, "--name", "s"]
        proc = tune_job(args, log_file=log_file)
        stdout = finish(proc)
        log_file.seek(0)
        log = log_file.read()
    out = log + stdout
    assert proc.returncode == 0, out[-5000:]
    # stdout carries the results: the table and the summary lines, nothing of Ray's or of the trials
    lines = stdout.strip().splitlines()
    assert lines[0].split()[0] == "trial", stdout[-3000:]
    assert len(lines) == 1 + 4 + 4, stdout[-3000:]  # header, 4 trials, directory/best/retrain/evaluate
    for noise in (
        "pid=",
        "(raylet)",
        "Configuration for experiment",
        "View detailed results",
        "repeated",
        "tensorboard",
    ):
        assert noise not in stdout, (noise, stdout[-3000:])
    assert "trial-" in log and "epoch 1/3" in log, log[-3000:]  # the trials' lines are in the log
    assert "4 trial(s)" in log and "learning_rate=grid{0.003, 0.002, 1.0, 1.5}" in log, log[-3000:]
    search = storage.join(gcs_prefix, "s")
    table = results(search)
    assert len(table) == 4, table
    assert set(table.columns) >= {
        "trial",
        "global_batch_size",
        "dropout",
        "decay_factor",
        "learning_rate",
        "best_val_loss",
        "epochs_run",
        "stopped",
        "wall_seconds",
    }
    # Every grid value ran once; ASHA stopped both blown-up trials, and the search still ran every
    # trial (ray-project/ray#54305 worked around).
    assert sorted(table["learning_rate"]) == [0.002, 0.003, 1.0, 1.5], table
    assert list(table[table["learning_rate"] >= 1.0]["stopped"]) == ["asha", "asha"], table.to_string()
    assert (table["epochs_run"] == 3).any(), table
    assert table["best_val_loss"].is_monotonic_increasing  # the monitored metric: lowest first
    names = set(storage.listdir(search))
    assert {"results.csv", "best_config.json", "best_model", "val_loss_curves.png"} <= names, names
    assert {"model.keras", "config.json"} <= set(storage.listdir(storage.join(search, "best_model")))
    best = storage.read_text(storage.join(search, "best_config.json"))
    assert '"monitor": "val_loss"' in best and json.loads(best)["learning_rate"] < 1.0
    assert '"builtin_size": 700' in best
    # The table follows the trials' own directories; each has metrics.json; best_model/ is a run.
    for row in table.to_dict("records"):
        trial = storage.join(search, "trials", row["trial"])
        on_disk = pd.read_csv(io.StringIO(storage.read_text(storage.join(trial, "history.csv"))))
        assert row["epochs_run"] == on_disk["epoch"].max(), (row, on_disk)
        assert row["best_val_loss"] == pytest.approx(on_disk["val_loss"].min()), (row, on_disk)
        assert storage.exists(storage.join(trial, "metrics.json")), trial
    assert {"saved_model", "metrics.json", "history.csv", "val_confusion.csv"} <= set(
        storage.listdir(storage.join(search, "best_model"))
    )
    # One best: results.csv's first row is the trial that best_config.json, best_model/ and the
    # printed lines come from (its own config.json, a checkpoint of its own directory).
    best_trial = table.iloc[0]["trial"]
    trial_config = storage.read_text(storage.join(search, "trials", best_trial, "config.json"))
    assert json.loads(best) == json.loads(trial_config)
    exported = json.loads(storage.read_text(storage.join(search, "best_model", "checkpoint_metrics.json")))
    assert exported["checkpoint"].startswith(storage.join(search, "trials", best_trial, "checkpoints") + "/")
    assert f"best trial: {best_trial} " in out, out[-3000:]
    # Tune's own callback ended every stopped trial's Train run before going on.
    for trial in table[table["stopped"] == "asha"]["trial"]:
        assert re.search(rf"{trial} finished or stopped after epoch \d+; its Train run ended", out), out[-5000:]


@pytest.mark.ray
def test_a_failed_trial_is_retried_by_tune_and_resumes_from_its_checkpoints(tmp_path):
    """Through Tune itself: a trial whose Train worker is killed fails (its Train run does not
    retry on its own), Tune's callback ends its run, Tune retries the trial once, and the retry
    resumes from the trial's own checkpoints."""
    from tests.ray_workers import train_workers

    args = ["--preset", "quick", "--set", "builtin_size=700", "--set", "epochs=3", "--samples", "1"]
    proc = tune_job([*args, "--storage", str(tmp_path), "--name", "r", "--max-concurrent", "1"])
    try:
        deadline = time.time() + 300
        checkpoints = []
        while time.time() < deadline and proc.poll() is None:
            trials = tmp_path / "r" / "trials"
            checkpoints = list(trials.glob("trial-*/checkpoints/epoch_0001/manifest.json")) if trials.is_dir() else []
            if checkpoints:
                break
            time.sleep(0.5)
        assert checkpoints, "no trial checkpointed its first epoch"
        victims = train_workers(proc.pid)
        assert victims, "no Train worker found"
        victims[0].send_signal(signal.SIGKILL)
        out = finish(proc, timeout=600)
    finally:
        if proc.poll() is None:  # an assertion above failed: end the search and its Ray cluster
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == 0, out[-5000:]
    trial = checkpoints[0].parts[-4]
    assert re.search(rf"{trial} failed \(Tune retries it\) after epoch \d+; its Train run ended", out), out[-5000:]
    assert "resumed from the checkpoint of epoch" in out, out[-5000:]
    table = results(str(tmp_path / "r"))
    assert list(table["trial"]) == [trial] and table["epochs_run"].iloc[0] == 3, table
    history = pd.read_csv(tmp_path / "r" / "trials" / trial / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3], history


@pytest.mark.ray
def test_killed_search_resumes_without_rerunning_finished_trials(tmp_path):
    # A relative --storage, as users type it: the trials (which Ray runs in directories of its
    # own) must still write under it.
    args = [*TINY_SEARCH, "--set", "epochs=2", "--samples", "2", "--max-concurrent", "1"]
    args += ["--storage", "searches", "--name", "r"]
    trials = tmp_path / "searches" / "r" / "trials"
    proc = tune_job(args, cwd=str(tmp_path))
    deadline = time.time() + 400
    finished = []
    while time.time() < deadline and not finished:  # a finished trial wrote its metrics.json
        finished = sorted(trials.glob("trial-*/metrics.json")) if trials.exists() else []
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        time.sleep(1)
    assert finished, "no trial finished in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray cluster
    proc.wait(timeout=60)
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    resumed = tune_job([*args, "--resume"], cwd=str(tmp_path))
    out = finish(resumed)
    assert resumed.returncode == 0, out[-5000:]
    assert len(results(str(tmp_path / "searches" / "r"))) == 2
    assert len(list(trials.glob("trial-*/history.csv"))) == 2
    for p, stamp in stamps.items():
        assert p.stat().st_mtime_ns == stamp, f"{p.parent.name} was run again"


@pytest.mark.ray
def test_stopping_a_trial_ends_its_train_run_before_returning(tmp_path):
    """What Tune's StopTrialTrainRuns callback does when ASHA stops a trial: when
    `trial_runs.stop_run` returns, every worker of the run is dead and nothing more is written."""
    import json

    from tests.tiny import write_tiny_csv

    data = write_tiny_csv(tmp_path / "tiny.csv", n_train=448, n_val=112, n_test=0)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "stop_run_main.py"), str(data), str(tmp_path / "runs")],
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = finish(proc, timeout=400)
    assert proc.returncode == 0, out[-5000:]
    from tests.stop_run_main import RESULT

    seen = json.loads(next(line for line in out.splitlines() if line.startswith(RESULT))[len(RESULT) :])
    assert seen["workers"] == 2 and seen["waited"] is not None, seen
    assert seen["states"] == ["DEAD", "DEAD"], seen  # dead when stop_run returned, not later
    assert seen["history_unchanged"] and 1 <= seen["epochs_at_stop"] < 40, seen
    assert seen["fit"] != "running" and seen["keys_left"] == 0, seen


def test_space_parsing_and_checks():
    from fer_dist import config as C
    from fer_dist import tune

    space = tune.parse_space(
        "seed", ["dropout=0.3:0.6", "global_batch_size=16,32", "learning_rate=off", "decay_factor=log:0.3:0.9"]
    )
    assert space["dropout"].kind == "uniform" and space["dropout"].values == (0.3, 0.6)
    assert space["global_batch_size"].values == (16, 32)
    assert "learning_rate" not in space and space["decay_factor"].kind == "loguniform"
    for bad, needle in [
        ("nope=1,2", "unknown config key"),
        ("dropout=0.6:0.3", "low < high"),
        ("dropout", "expected key="),
    ]:
        with pytest.raises(UserError, match=needle):
            tune.parse_space("seed", [bad])
    grid = tune.parse_space("quick", ["learning_rate=grid:0.003,1e-4", "global_batch_size=grid:16,32"])
    assert grid["learning_rate"] == tune.Dim("grid", (0.003, 1e-4)) and grid["global_batch_size"].values == (16, 32)
    assert tune.trial_count(grid, 3) == 3 * 2 * 2 and tune.trial_count(space, 3) == 3
    assert grid["learning_rate"].describe() == "grid{0.003, 0.0001}"
    assert tune.Dim("grid", (1, 2)).to_tune() == {"grid_search": [1, 2]}
    with pytest.raises(UserError, match="global_batch_size: 8 is smaller than --workers-per-trial 2:12"):
        tune.check_space(C.resolve("seed"), tune.parse_space("seed", ["global_batch_size=16,8"]), "2:12")
    tune.check_space(C.resolve("seed"), tune.parse_space("seed", ["global_batch_size=16,24"]), "5")  # uneven: fine
    with pytest.raises(UserError, match="dropout"):
        tune.check_space(C.resolve("seed"), tune.parse_space("seed", ["dropout=0.5,1.5"]), 1)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--samples", "0"], "--samples 0"),
        (["--metric", "accuracy"], "--metric 'accuracy'"),
        (["--searcher", "grid"], "--searcher 'grid'"),
        (["--resume"], "--resume needs --name"),
        (["--space", "dropout=2:1"], "low < high"),
        (["--space", "dropout=grid:"], "expected key=grid:a,b,c"),
        (["--space", "dropout=grid:0.2,x"], "dropout='x': expected a number"),
        (["--space", "dropout=grid:0.2,0.4", "--searcher", "optuna"], "Optuna does not search grids"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, needle):
    proc = subprocess.run(
        [sys.executable, "jobs/tune.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last and "Traceback" not in proc.stderr


@pytest.mark.parametrize("metric", ["val_accuracy", "val_loss"])
def test_results_rank_by_the_monitored_metric(metric):
    """results.csv puts the best trial first: the highest val_accuracy, or the lowest val_loss,
    each trial scored by its best epoch; a trial that ran fewer epochs than the config's was
    stopped by ASHA."""
    import types

    from fer_dist import config as C
    from fer_dist import tune

    base = C.resolve("quick", {"epochs": 3, "monitor": metric})
    curves = {"a": [0.2, 0.5, 0.4], "b": [0.3, 0.35], "c": [0.1, 0.6, 0.2]}  # best accuracy b < a < c
    grid = [
        types.SimpleNamespace(
            metrics={"trial_id": trial},
            metrics_dataframe=pd.DataFrame(
                {"epoch": range(1, len(scores) + 1), "val_accuracy": scores, "val_loss": [1 - s for s in scores]}
            ),
            config={"dropout": 0.1},
            error=None,
            path=f"/nowhere/{trial}",
        )
        for trial, scores in curves.items()
    ]
    table, _ = tune.results_table(grid, base, tune.SearchSpec(metric=metric))
    assert [t[-1] for t in table["trial"]] == ["c", "a", "b"], table
    expected = [0.6, 0.5, 0.35] if metric == "val_accuracy" else [0.4, 0.5, 0.65]
    assert list(table[f"best_{metric}"]) == pytest.approx(expected), table
    assert list(table["stopped"]) == ["no", "no", "asha"], table
