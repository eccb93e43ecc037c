"""The scaling model and the run's advice (`fer_dist.scaling`): arithmetic on made-up links."""

from __future__ import annotations

import os

import pytest

from fer_dist import config as C
from fer_dist import scaling

B32 = 95_588_380  # the seed recipe's gradients in float32 (what a run logs)
MODES = {"float32": [B32, 1], "bfloat16": [B32 // 2, 1], "powersgd1": [330_000, 3], "powersgd4": [860_000, 3]}


def measured(workers: int, compute_s: float, gbit: float, latency_s: float, mode: str = "float32"):
    """What a run of `mode` on a known link would measure: its collectives timed alone, its step."""
    sent, calls = MODES[mode]
    allreduce = scaling.ring_allreduce_seconds(sent, workers, gbit, calls, latency_s)
    share = scaling.CommunicationShare(
        workers,
        values=B32 // 4,
        wire_bytes=sent,
        dtype=mode,
        allreduce_s=allreduce,
        vote_s=2 * (workers - 1) * latency_s,  # a one-value all-reduce: latency alone
        collectives=calls,
        float32_s=scaling.ring_allreduce_seconds(B32, workers, gbit, 1, latency_s),
        float32_bytes=B32,
        modes=MODES,
    )
    share.step_s = compute_s / workers + allreduce
    return share


def test_the_ring_model_sends_twice_the_buffer_less_a_share_and_pays_latency_per_hop():
    # 2 workers: each sends and receives 2 (N-1)/N = 1 buffer; 1 GB at 8 Gbit/s is 1 s, plus 2 hops.
    assert scaling.ring_allreduce_seconds(1e9, 2, 8.0, 1, 1e-4) == pytest.approx(1.0 + 2e-4)
    assert scaling.ring_allreduce_seconds(1e9, 4, 8.0, 3, 1e-4) == pytest.approx(1.5 + 3 * 6e-4)
    assert scaling.ring_allreduce_seconds(1e9, 1, 8.0) == 0.0
    # speed-up per worker: compute C split N ways against C/N plus the all-reduce
    assert scaling.predicted_speedup_per_worker(2, 1.0, 1e9, 8.0, 1, 0.0) == pytest.approx(0.5 / 1.5)


@pytest.mark.parametrize("mode", ["float32", "powersgd1"])
def test_the_advice_reads_the_link_back_off_the_runs_own_timings(mode):
    share = measured(2, compute_s=0.2, gbit=10.0, latency_s=50e-6, mode=mode)
    advice = share.advice()
    assert advice.gbit_per_s == pytest.approx(10.0, rel=1e-6)
    assert advice.latency_s == pytest.approx(50e-6, rel=1e-6)
    assert advice.compute_s == pytest.approx(0.2, rel=1e-6)
    for name, (sent, calls) in MODES.items():
        for n in (2, 4, 8):
            want = scaling.predicted_speedup_per_worker(n, 0.2, sent, 10.0, calls, 50e-6)
            assert advice.predicted[name][n] == pytest.approx(want, abs=1e-3)
    # float32 sends 96 MB (77 ms at 2 workers) against 100 ms of compute each; rank 1 sends 0.33 MB
    assert advice.predicted["float32"][2] < scaling.PAYS < advice.predicted["powersgd1"][8]
    assert advice.mode == "powersgd1" and advice.workers == 8
    assert advice.line().endswith(
        "pays (>= 0.75) up to 8 workers: powersgd1 "
        "(--set gradient_compression=powersgd --set powersgd_rank=1 --set allreduce_dtype=float32)"
    )
    assert share.as_metrics()["advice"]["mode"] == "powersgd1"


def test_the_advice_names_the_largest_worker_count_that_still_pays():
    # a slow link (1 Gbit/s): rank 1's 0.33 MB costs ~2.6 ms a step at 2 workers; compute 40 ms
    advice = measured(2, compute_s=0.04, gbit=1.0, latency_s=200e-6).advice()
    assert advice.mode == "powersgd1"
    pays = [n for n in (2, 4, 8) if advice.predicted["powersgd1"][n] >= scaling.PAYS]
    assert advice.workers == max(pays) and advice.workers < 8, advice.predicted


def test_no_mode_pays_when_the_step_is_all_latency():
    advice = measured(2, compute_s=0.001, gbit=10.0, latency_s=200e-6, mode="powersgd1").advice()
    assert advice.compute_s == pytest.approx(0.001, rel=1e-6)
    assert advice.workers == 1
    assert "no mode reaches 0.75 with 2 workers: train on one, or raise global_batch_size" in advice.line()


def test_the_advice_names_a_mode_that_pays_somewhere_before_none():
    # 4 workers on a slow link: at 4 no mode reaches 0.75, yet PowerSGD does at 2
    share = measured(4, compute_s=0.03, gbit=1.0, latency_s=100e-6, mode="powersgd1")
    advice = share.advice()
    assert max(by[4] for by in advice.predicted.values()) < scaling.PAYS <= advice.predicted["powersgd1"][2]
    assert advice.workers == 2 and advice.mode.startswith("powersgd")


def test_no_bandwidth_is_read_off_a_buffer_that_takes_no_longer_than_the_vote():
    share = measured(2, compute_s=0.2, gbit=10.0, latency_s=50e-6)
    share.float32_s = share.vote_s  # a tiny model: the float32 all-reduce is all latency (or jitter)
    assert share.advice() is None


def test_a_wire_mode_is_a_dtype_or_powersgd_at_a_rank():
    assert scaling.wire_settings("powersgd12")["powersgd_rank"] == 12
    assert scaling.wire_settings("float16") == {"gradient_compression": "none", "allreduce_dtype": "float16"}
    for bad in ("powersgd", "powersgd0", "powersgdx", "float64", ""):
        with pytest.raises(ValueError, match="unknown wire mode"):
            scaling.wire_settings(bad)


def test_no_advice_before_the_step_time_is_known_and_none_from_old_state():
    share = measured(2, compute_s=0.8, gbit=10.0, latency_s=50e-6)
    share.step_s = 0.0
    assert share.advice() is None and "advice" not in share.as_metrics()
    # a loop state written before the advice existed (no float32_s, no modes) loads and advises nothing
    old = {"workers": 2, "values": 1, "wire_bytes": 4, "dtype": "float32", "allreduce_s": 0.3, "step_s": 0.5}
    assert scaling.CommunicationShare.from_dict(dict(old, share=0.6, dominates=True)).advice() is None
    # and the advice's own metrics do not come back as a field
    back = scaling.CommunicationShare.from_dict(measured(2, 0.8, 10.0, 50e-6).as_metrics())
    assert back.advice().mode == "powersgd1"


@pytest.mark.parametrize("mode", scaling.ADVISED_MODES)
def test_every_advised_mode_is_a_valid_config(mode):
    """The flags the advice prints are the config's own keys and values."""
    words = scaling.wire_flags(mode).split()
    sets = dict(word.split("=", 1) for word in words[1::2])
    assert words[0::2] == ["--set"] * len(sets)
    config = C.resolve("seed", sets)
    for key, value in scaling.wire_settings(mode).items():
        assert getattr(config, key) == value


def test_the_scaling_benchmark_takes_each_rounds_own_ratio_and_their_median():
    """benchmarks/scaling.py `row`: p1 and w2 interleaved in rounds; the efficiency is the median of
    the rounds' own ratios, not the ratio of the medians (a slow round of p1 alone decides nothing)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "scaling.py")
    spec = importlib.util.spec_from_file_location("scaling_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def run(rate, allreduce=0.0):
        return {"images_per_second": rate, "communication": {"allreduce_s": allreduce, "vote_s": 0.02}}

    p1s = [run(180.0), run(174.0), run(134.0)]
    w2s = [run(135.0, 0.007), run(120.0, 0.006), run(140.0, 0.008)]
    row = bench.row("seed", 64, "powersgd1", p1s, w2s, run(88.0), vote_every=20)
    assert row["efficiency_rounds"] == [0.75, 0.69, 1.045]
    assert row["efficiency"] == 0.75 and row["p1_images_per_second"] == 174.0 and row["w2_images_per_second"] == 135.0
    split = row["split_2_workers"]  # the 2-worker step, 64 / 135 img/s, split into its measured parts
    assert split["compute_ms"] == round(32 / 88 * 1e3, 1) and split["allreduce_ms"] == 7.0 and split["votes_ms"] == 1.0
    parts = split["compute_ms"] + split["allreduce_ms"] + split["votes_ms"] + split["sync_and_wait_ms"]
    assert parts == pytest.approx(64 / 135 * 1e3, abs=0.2) == split["step_ms"]


def test_the_run_notes_what_compression_cost_its_optimizer():
    note = scaling.optimizer_note("adam", "powersgd")
    assert "3.9 points" in note and "--set optimizer=sgd" in note and "--set adam_variance=frozen" in note
    assert scaling.optimizer_note("adam", "powersgd", "frozen") is None  # the remedy is on
    assert scaling.optimizer_note("sgd", "powersgd") is None
    assert scaling.optimizer_note("adam", "none") is None
