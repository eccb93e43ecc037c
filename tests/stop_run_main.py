"""Test helper: starts a Train run as a Tune trial's would be (workers recorded), stops it
with `trial_runs.stop_run` after its first epoch, and prints what it saw as one JSON line.

    python tests/stop_run_main.py DATA_CSV RUNS_DIR
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

RESULT = "stop_run_main result: "  # the line the test reads (Ray's own log lines may follow it)


def main(data: str, runs_dir: str) -> None:
    import ray
    from ray.experimental import internal_kv

    from fer_dist import config as C
    from fer_dist import launch, trial_runs

    ray.init(num_cpus=2, include_dashboard=False)
    config = C.resolve("smoke", {"data": data, "epochs": 40})
    trainer = launch.make_trainer(
        config, storage_uri=runs_dir, name="r", num_workers=2, max_failures=0, record_workers=True
    )
    outcome = {}

    def fit():
        try:
            trainer.fit()
            outcome["fit"] = "finished"
        except Exception as e:  # the stop kills the workers: the run fails, as a stopped trial's does
            outcome["fit"] = type(e).__name__

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    history = os.path.join(runs_dir, "r", "history.csv")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(history) and len(open(history).readlines()) >= 2):
        time.sleep(0.2)
    workers = [internal_kv._internal_kv_get(k) for k in internal_kv._internal_kv_list("fer_dist/run/r/worker/")]
    waited = trial_runs.stop_run("r")
    states = [trial_runs.actor_state(w.decode()) for w in workers]
    at_stop = open(history).read()
    time.sleep(8)
    thread.join(timeout=60)
    print(
        RESULT
        + json.dumps(
            {
                "waited": waited,
                "workers": len(workers),
                "states": states,
                "history_unchanged": open(history).read() == at_stop,
                "epochs_at_stop": len(at_stop.splitlines()) - 1,
                "fit": outcome.get("fit", "running"),
                "keys_left": len(internal_kv._internal_kv_list("fer_dist/run/r/")),
            }
        ),
        flush=True,
    )
    ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
