"""Stopping a Tune trial's Train run (ray-project/ray#54305): the workaround beside Tune (`tune.py`).

When Tune stops a Train V2 trial, the placement group of its worker group is not released and
the next trial waits forever; and its workers, which report asynchronously, go on training until Ray kills them. Each
trial's workers record their actor ids (rank 0 also the placement group) in Ray's KV store;
`tune.StopTrialTrainRuns` calls `stop_run` when Tune completes or stops a trial: it removes
exactly that group (which kills its workers) and waits until every worker has died, inside
Tune's event loop, so no other trial is started before the run has ended. Safe with
concurrent trials: other trials' groups are never touched. Trials' Train runs do not retry
on their own (`max_failures=0`); Tune retries the trial, which resumes from its checkpoints.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

RUN_KEY = "fer_dist/run/{run}/"


def record_worker(run_name: str, rank: int) -> None:
    """Called by every Train worker of a trial: remember its actor (and rank 0 the group)."""
    import ray
    from ray.experimental import internal_kv

    if not internal_kv._internal_kv_initialized():
        return
    prefix = RUN_KEY.format(run=run_name)
    actor = ray.get_runtime_context().get_actor_id()
    internal_kv._internal_kv_put(f"{prefix}worker/{rank}", actor, overwrite=True)
    pg = ray.util.get_current_placement_group()
    if rank == 0 and pg is not None:
        internal_kv._internal_kv_put(f"{prefix}pg", pg.id.hex(), overwrite=True)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stop_run(run_name: str, timeout_s: float = 60.0) -> float | None:
    """Ends a trial's Train run: removes its worker placement group if it is still there,
    then waits until every recorded worker is dead. Returns the seconds waited (None when the
    run recorded nothing: it never started)."""
    import time

    import ray
    from ray.experimental import internal_kv
    from ray.util.placement_group import PlacementGroup

    prefix = RUN_KEY.format(run=run_name)
    keys = [_text(k) for k in internal_kv._internal_kv_list(prefix)]
    if not keys:
        return None
    values = {k: _text(internal_kv._internal_kv_get(k)) for k in keys}
    start = time.monotonic()
    pg_id = values.pop(f"{prefix}pg", None)
    if pg_id and ray.util.placement_group_table().get(pg_id, {}).get("state") not in (None, "REMOVED"):
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        log.info("%s: removed its worker placement group (ray-project/ray#54305)", run_name)
    alive = set(values.values())
    while alive and time.monotonic() - start < timeout_s:
        alive = {a for a in alive if actor_state(a) not in ("DEAD", None)}
        if alive:
            time.sleep(0.1)
    for key in keys:
        internal_kv._internal_kv_del(key)
    waited = time.monotonic() - start
    if alive:
        log.warning("%s: %d Train worker(s) still alive after %.0f s", run_name, len(alive), waited)
    return waited


def actor_state(actor_id: str) -> str | None:
    """ALIVE, DEAD, ... from the GCS actor table (the public State API needs the dashboard,
    which `ray[train,tune]` does not install)."""
    from ray._private import state

    return state.actors(actor_id=actor_id).get("State")
