"""`pizzactl bench serve` on a handful of requests: every figure is there and consistent (no speed asserts)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from pizzactl.bench.inprocess import Setting, settings_for
from pizzactl.bench.load import percentile, wire_body
from pizzactl.bench.serve import GOALS, pick_photos

from support.cli import clean_env, invoke, overrides, run_pizzactl

pytestmark = pytest.mark.slow

KEYS = {
    "model_img_per_s",
    "e2e_img_per_s",
    "ratio",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "model_p50_ms",
    "overhead_p50_ms",
    "wire_bytes_per_image",
}


def test_percentile_interpolates_like_numpy():
    import numpy as np

    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_photos_alternate_between_classes(shared_data):
    photos = pick_photos(shared_data, 6)
    assert [p.parent.name for p in photos] == ["not_pizza", "pizza"] * 3


def test_bench_serve_reports_every_figure_consistently(tiny_model, shared_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIZZACTL_")}
    env.update(PIZZACTL_STATE_DIR=str(tmp_path / "state"), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    proc = run_pizzactl(
        "bench",
        "serve",
        "--models",
        str(tiny_model),
        "--data",
        str(shared_data),
        "--concurrency",
        "4",
        "--requests",
        "12",
        "--overload-seconds",
        "2",
        "--threads",  # 4 TensorFlow processes, not the default 9: each setting's own process is what is checked
        "0,2",
        "--json",
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert set(res) >= KEYS
    # every runtime the export kept (float LiteRT for the tiny model), and TensorFlow; auto's choice on top
    assert set(res["runtimes"]) == {"litert", "tensorflow"} and res["runtime"] == "litert"
    for name, r in res["runtimes"].items():
        assert r["served_by"] == name
        settings = {(row["intra"], row["inter"]) for row in r["sweep"]}
        if name == "tensorflow":
            assert settings == {(a, b) for a in (0, 2) for b in (0, 2)}  # a fresh process each
        else:
            assert settings == {(1, 1), (2, 1)}  # LiteRT has no default of its own: 0 runs as 1 thread
        assert {row["batch"] for row in r["sweep"]} == {16, 32}
        for row in r["sweep"]:  # every cell measured in each of the alternating rounds
            assert len(row["rounds"]) == 3 and row["img_per_s"] == pytest.approx(statistics.median(row["rounds"]))
        assert r["best"] == max(r["sweep"], key=lambda row: row["img_per_s"])
        assert r["best_in_process_img_per_s"] == r["best"]["img_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["e2e_img_per_s"] / r["model_img_per_s"], rel=0.01)
        assert r["errors"] == 0 and r["requests"] == 12
    # the speedup comes from the best settings run in alternating rounds, not from sweeps run one after the other
    rounds = res["side_by_side"]
    assert set(rounds) == {"litert", "tensorflow"} and all(len(v) == 3 and min(v) > 0 for v in rounds.values())
    assert res["speedup_vs_tensorflow"]["tensorflow"] == 1.0
    assert res["speedup_vs_tensorflow"]["litert"] == pytest.approx(
        statistics.median(rounds["litert"]) / statistics.median(rounds["tensorflow"]), rel=0.01
    )
    assert res["errors"] == 0 and res["requests"] == 12 and res["concurrency"] == 4 and res["threads"] == [0, 2]
    assert res["model_img_per_s"] > 0 and res["e2e_img_per_s"] > 0
    assert res["ratio"] == pytest.approx(res["e2e_img_per_s"] / res["model_img_per_s"], rel=0.01)
    assert 0 < res["p50_ms"] <= res["p95_ms"] <= res["p99_ms"]
    assert res["model_p50_ms"] > 0
    assert res["overhead_p50_ms"] == pytest.approx(res["p50_ms"] - res["model_p50_ms"], abs=0.02)
    # the wire figure is the JSON request the gateway sends for the shrunken JPEG of each photo
    assert res["image_size"] == 64
    assert res["jpeg_bytes_per_image"] < res["wire_bytes_per_image"] < res["upload_bytes_per_image"]
    assert res["wire_bytes_per_image"] == pytest.approx(res["jpeg_bytes_per_image"] * 4 / 3, rel=0.05)
    assert set(res["goals"]) == set(GOALS)
    assert res["goals"]["wire_bytes_per_image"]["ok"] == (res["wire_bytes_per_image"] <= 60000)
    # where the CPU went during the throughput runs (Linux /proc), and what else ran on the machine
    assert set(res["cpu_ms_per_image"]) == {"modelserver", "gateway", "load client"}
    if sys.platform.startswith("linux"):
        assert all(v is not None and v >= 0 for v in res["cpu_ms_per_image"].values())  # /proc counts 10 ms ticks
        assert res["model_cpu_ms_per_image"] > 0
    assert len(res["load_average"]["before"]) == 3 and len(res["load_average"]["after"]) == 3
    # p99 and the share shed at 1x and 2x the measured throughput, offered in an open loop, per runtime
    for r in [res, *res["runtimes"].values()]:
        levels = r["load_levels"]
        assert list(levels) == ["1x", "2x"]
        for multiple, level in zip((1, 2), levels.values(), strict=True):
            assert level["offered_per_s"] == pytest.approx(multiple * r["e2e_img_per_s"], rel=0.02)
            assert level["requests"] == level["answered"] + level["shed"] + level["errors"] > 0
            assert level["errors"] == 0, level.get("first_errors")  # answered or refused at once, never timed out
            assert level["shed_share"] == pytest.approx(level["shed"] / level["requests"], abs=1e-4)
            assert 0 < level["p50_ms"] <= level["p99_ms"]
            assert (level["shed_p99_ms"] is None) == (level["shed"] == 0)


def test_the_default_sweep_is_every_thread_pair_for_tensorflow_and_one_or_two_for_litert():
    assert settings_for("tensorflow") == [Setting("tensorflow", a, b) for a in (0, 1, 2) for b in (0, 1, 2)]
    assert settings_for("litert") == [Setting("litert", 1, 1), Setting("litert", 2, 1)]
    assert settings_for("litert-int8", (4, 0, 4)) == [Setting("litert-int8", 1, 1), Setting("litert-int8", 4, 1)]
    assert settings_for("tensorflow", (2, 2)) == [Setting("tensorflow", 2, 2)]


@pytest.mark.parametrize("text", ["", "two", "1,-1", "1,,x"])
def test_threads_that_are_not_counts_are_a_usage_error_before_anything_starts(text, tmp_path):
    proc = invoke("bench", "serve", "--models", str(tmp_path / "none"), "--threads", text, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--threads" in proc.stderr and "thread counts" in proc.stderr  # not a missing model


def test_a_runtime_the_model_lacks_is_a_usage_error(tf_only_model, shared_data, tmp_path):
    argv = ["bench", "serve", "--models", str(tf_only_model), "--data", str(shared_data), "--runtimes", "litert-int8"]
    proc = invoke(*argv, env=overrides(clean_env()), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "litert-int8" in proc.stderr and "export" in proc.stderr


def test_wire_body_is_a_tf_serving_instances_request():
    body = json.loads(wire_body(b"\xff\xd8jpeg"))
    assert body == {"instances": [{"b64": "/9hqcGVn"}]}


def test_parse_variant_names_a_set_of_model_server_flags():
    from pizzactl.bench.compare import parse_variant

    assert parse_variant("int8=--runtime litert-int8") == ("int8", ["--runtime", "litert-int8"])
    assert parse_variant("--batch-threads 2") == ("--batch-threads 2", ["--batch-threads", "2"])
    assert parse_variant("defaults=") == ("defaults", [])


def test_serve_ab_measures_each_variant_in_alternating_rounds(tiny_model, shared_data, tmp_path):
    """benchmarks/serve_ab.py: one server pair per variant, each actually on the runtime it was asked for."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "serve_ab.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIZZACTL_")}
    env.update(PIZZACTL_STATE_DIR=str(tmp_path / "state"), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    argv = ["--models", str(tiny_model), "--data", str(shared_data), "--rounds", "2", "--requests", "6"]
    argv += ["--concurrency", "2", "tf=--runtime tensorflow", "lite=--runtime litert --batch-threads 2"]
    proc = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert list(res["variants"]) == ["tf", "lite"] and res["rounds"] == 2
    tf, lite = res["variants"]["tf"], res["variants"]["lite"]
    assert (tf["served_by"], lite["served_by"]) == ("tensorflow", "litert")
    assert lite["flags"] == ["--runtime", "litert", "--batch-threads", "2"]
    for v in (tf, lite):
        assert v["errors"] == 0 and len(v["img_per_s_rounds"]) == 2 and min(v["img_per_s_rounds"]) > 0
        assert v["img_per_s"] == pytest.approx(statistics.median(v["img_per_s_rounds"]), abs=0.01)
        assert v["p50_ms"] > 0 and v["server_mean_batch"] >= 1
        assert set(v["cpu_ms_per_image"]) == {"modelserver", "gateway"}
    assert tf["vs_first"] == 1.0 and lite["vs_first"] == pytest.approx(lite["img_per_s"] / tf["img_per_s"], rel=0.01)


def test_ratios_keep_three_significant_figures_however_small():
    from pizzactl.bench.serve import significant

    assert significant(0.03841918136835357) == 0.0384  # round(x, 3) gave 0.038, 1% off
    assert significant(2.98765) == 2.99 and significant(1.0) == 1.0
