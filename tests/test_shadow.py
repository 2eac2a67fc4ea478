"""Shadow mode and the live comparison of two versions at the gateway (issue 23): users only ever
see stable's answers, the candidate answers the same images in the background, and /rollout says
how the two compare."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from pizzactl.model.store import list_versions
from pizzactl.serving.gateway import create_app
from pizzactl.serving.modelserver.versions import model_config_text

from support.processes import free_port
from support.serving_fixtures import FakeTFServing, ModelServerProcess, UvicornThread

RED, BLUE = (200, 30, 30), (30, 30, 200)


def is_red(image: Image.Image) -> bool:
    r, _, b = image.resize((1, 1)).getpixel((0, 0))
    return r > b


def stable_model(image: Image.Image) -> dict[str, Any]:
    """Red is pizza, blue is not."""
    if is_red(image):
        return {"label": "pizza", "probabilities": [0.1, 0.9], "probability": 0.9}
    return {"label": "not_pizza", "probabilities": [0.9, 0.1], "probability": 0.1}


def flipping_model(image: Image.Image) -> dict[str, Any]:
    """The candidate: calls red not pizza (|Δ| 0.5 from stable), agrees on blue (|Δ| 0.1)."""
    if is_red(image):
        return {"label": "not_pizza", "probabilities": [0.6, 0.4], "probability": 0.4}
    return {"label": "not_pizza", "probabilities": [0.8, 0.2], "probability": 0.2}


def photo(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buf, "PNG")
    return buf.getvalue()


def body(colour: tuple[int, int, int]) -> dict[str, str]:
    return {"image_b64": base64.b64encode(photo(colour)).decode()}


@pytest.fixture
def tf_serving():
    """TF Serving with stable=1 and canary=2 labels (a model config file), answering by the image."""
    fake = FakeTFServing(versions={1: stable_model, 2: flipping_model}, labels={"stable": 1, "canary": 2})
    yield fake
    fake.close()


def gateway(tf_serving: FakeTFServing, tmp_path, **settings: Any) -> UvicornThread:
    """The gateway in front of `tf_serving`; room for 100 comparison calls in flight (max_concurrency
    400) unless given: the exact counts below must not depend on how fast a busy machine answers."""
    settings.setdefault("rollout_dir", tmp_path / "rollout")
    settings.setdefault("max_concurrency", 400)
    return UvicornThread(create_app(tf_serving.url, classes="not_pizza,pizza", **settings))


def settle(client: httpx.Client, done, timeout: float = 60) -> dict[str, Any]:
    """/rollout once `done(rollout)` holds: the background calls have finished (not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        rollout = client.get("/rollout").json()
        if done(rollout) or time.monotonic() > deadline:
            return rollout
        time.sleep(0.05)


def compared(n: int):
    return lambda r: r["comparison"]["pairs"] + r["shadow_skipped"] >= n


def test_shadow_answers_are_byte_identical_to_stable_only_serving(tf_serving, tmp_path):
    only_stable = FakeTFServing(versions={1: stable_model}, labels={"stable": 1})
    colours = [RED, BLUE, (180, 90, 20), (20, 90, 180)] * 5
    try:
        answers = {}
        for name, server, settings in (
            ("stable only", only_stable, {}),
            ("shadow", tf_serving, {"shadow": True}),
        ):
            with gateway(server, tmp_path, **settings) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
                replies = [client.post("/predict", json=body(c)) for c in colours]
                answers[name] = [(r.status_code, r.headers["x-model-version"], r.content) for r in replies]
                if name == "shadow":
                    rollout = settle(client, compared(len(colours)))
    finally:
        only_stable.close()
    assert answers["shadow"] == answers["stable only"]
    assert {a[0] for a in answers["shadow"]} == {200}
    assert rollout["mode"] == "shadow" and rollout["comparison"]["pairs"] == len(colours), json.dumps(rollout)
    assert tf_serving.predicts_by_version == {1: len(colours), 2: len(colours)}  # the candidate saw every image


def test_comparison_numbers_for_a_candidate_that_flips_known_inputs(tf_serving, tmp_path):
    colours = [RED] * 30 + [BLUE] * 70
    with gateway(tf_serving, tmp_path, shadow=True) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        labels = [client.post("/predict", json=body(c)).json()["label"] for c in colours]
        rollout = settle(client, compared(len(colours)))
        metrics = client.get("/metrics").text
    assert labels == ["pizza"] * 30 + ["not_pizza"] * 70  # stable's
    comparison = rollout["comparison"]
    assert (comparison["pairs"], comparison["agreements"], comparison["agreement"]) == (100, 70, 0.7)
    assert comparison["abs_dp"]["p50"] == pytest.approx(0.1) and comparison["abs_dp"]["p90"] == pytest.approx(0.5)
    assert comparison["abs_dp"]["max"] == pytest.approx(0.5)
    assert comparison["kept"] == 30 and comparison["disagreements"] == 30
    assert rollout["shadow_skipped"] == 0
    versions = rollout["versions"]
    assert versions["1"]["role"] == "stable" and versions["1"]["labels"] == {"pizza": 30, "not_pizza": 70}
    assert versions["2"]["role"] == "candidate" and versions["2"]["labels"] == {"not_pizza": 100}
    assert versions["1"]["requests"] == versions["2"]["requests"] == 100
    assert "pizzactl_gateway_comparison_agreements_total 70.0" in metrics
    assert 'pizzactl_gateway_version_requests_total{role="candidate",version="2"} 100.0' in metrics


def test_canary_requests_are_compared_with_stable_too(tf_serving, tmp_path):
    with (
        gateway(tf_serving, tmp_path, canary_percent=50) as gw,
        httpx.Client(base_url=gw.url, timeout=30) as client,
    ):
        versions = [client.post("/predict", json=body(RED)).json()["model_version"] for _ in range(40)]
        rollout = settle(client, compared(20))
    assert versions.count(2) == 20  # the user got the candidate's answer, as before
    assert rollout["mode"] == "canary" and rollout["percent"] == 50.0
    assert (rollout["comparison"]["pairs"], rollout["comparison"]["agreements"]) == (20, 0)
    assert rollout["versions"]["1"]["requests"] == 40  # 20 answered users, 20 were the comparison's
    assert rollout["versions"]["2"]["requests"] == 20


def test_kept_disagreements_are_bounded_by_rollout_keep(tf_serving, tmp_path):
    kept_dir = tmp_path / "kept"
    with (
        gateway(tf_serving, tmp_path, shadow=True, rollout_dir=kept_dir, rollout_keep=5) as gw,
        httpx.Client(base_url=gw.url, timeout=30) as client,
    ):
        for _ in range(12):
            assert client.post("/predict", json=body(RED)).status_code == 200
        rollout = settle(client, compared(12))
    assert rollout["comparison"]["disagreements"] == 12 and rollout["comparison"]["kept"] == 5
    assert rollout["comparison"]["kept_dir"] == str(kept_dir)
    records = sorted(kept_dir.glob("*.json"))
    assert len(records) == 5 and len(list(kept_dir.glob("*.jpg"))) == 5

    record = json.loads(records[-1].read_text())
    assert record["stable"]["label"] == "pizza" and record["candidate"]["label"] == "not_pizza"
    assert record["stable"]["version"] == "1" and record["candidate"]["version"] == "2"
    assert (kept_dir / record["image"]).read_bytes()[:2] == b"\xff\xd8"  # the wire JPEG the models saw


@pytest.mark.parametrize("failure", ["raising", "unloaded", "slow"])
def test_a_dead_or_slow_candidate_costs_users_nothing_under_load(tf_serving, tmp_path, failure):
    if failure == "raising":
        tf_serving.broken.add(2)
    elif failure == "unloaded":
        tf_serving.unloaded.add(2)
    else:
        tf_serving.slow[2] = 8.0  # beyond the model timeout below
    n = 160
    with (
        gateway(tf_serving, tmp_path, shadow=True, model_timeout=2.0) as gw,  # stable: patient on a busy machine
        httpx.Client(base_url=gw.url, timeout=60, limits=httpx.Limits(max_connections=16)) as client,
        ThreadPoolExecutor(16) as pool,
    ):
        replies = list(pool.map(lambda c: client.post("/predict", json=body(c)), [RED, BLUE] * (n // 2)))
        rollout = settle(client, lambda r: candidate(r)["requests"] + r["shadow_skipped"] >= n)
    assert [r.status_code for r in replies] == [200] * n, [r.text for r in replies if r.status_code != 200][:3]
    assert {r.headers["x-model-version"] for r in replies} == {"1"}
    assert [r.json()["label"] for r in replies] == ["pizza", "not_pizza"] * (n // 2)
    assert rollout["versions"]["1"]["errors"] == 0 and rollout["versions"]["1"]["requests"] == n
    failed = candidate(rollout)
    assert failed["requests"] > 0 and failed["errors"] == failed["requests"]
    assert failed["requests"] + rollout["shadow_skipped"] == n, rollout
    assert rollout["comparison"]["pairs"] == 0


def test_users_never_wait_for_the_shadow_call_and_its_calls_in_flight_are_bounded(tf_serving, tmp_path):
    """The candidate holds every call until released: users are all answered meanwhile, and past the
    bound (max(4, max_concurrency // 4) = 16 calls in flight) the shadow call is skipped and counted."""
    gate = tf_serving.gates[2] = threading.Event()
    n = 160
    try:
        with (
            gateway(tf_serving, tmp_path, shadow=True, model_timeout=60, max_concurrency=64) as gw,
            httpx.Client(base_url=gw.url, timeout=60, limits=httpx.Limits(max_connections=16)) as client,
            ThreadPoolExecutor(16) as pool,
        ):
            replies = list(pool.map(lambda c: client.post("/predict", json=body(c)), [RED, BLUE] * (n // 2)))
            held = client.get("/rollout").json()
            gate.set()
            rollout = settle(client, compared(n))
    finally:
        gate.set()
    assert [r.status_code for r in replies] == [200] * n
    assert held["comparison"]["pairs"] == 0  # every shadow call was still in flight: none was awaited
    assert held["shadow_skipped"] == held["shadow_skipped_by_reason"]["in_flight"] == n - 16
    assert rollout["comparison"]["pairs"] == 16 and tf_serving.predicts_by_version[2] == 16


def test_no_shadow_call_while_the_gateways_queue_is_more_than_half_full(tf_serving, tmp_path):
    """A queue of one image (max_queue=1) is more than half full with any request in it."""
    with (
        gateway(tf_serving, tmp_path, shadow=True, max_queue=1) as gw,
        httpx.Client(base_url=gw.url, timeout=30) as client,
    ):
        assert [client.post("/predict", json=body(RED)).status_code for _ in range(5)] == [200] * 5
        rollout = client.get("/rollout").json()
    assert rollout["shadow_skipped_by_reason"] == {"queue": 5} and rollout["comparison"]["pairs"] == 0
    assert tf_serving.predicts_by_version == {1: 5}


def candidate(rollout: dict[str, Any]) -> dict[str, Any]:
    """The candidate's stats (keyed by the label's name while its version was never seen)."""
    found = [v for v in rollout["versions"].values() if v["role"] == "candidate"]
    return found[0] if found else {"requests": 0, "errors": 0}


def test_rollout_shape_before_any_traffic_and_its_auth(tf_serving, tmp_path):
    with gateway(tf_serving, tmp_path, shadow=True) as gw:
        rollout = httpx.get(gw.url + "/rollout", timeout=30).json()
    assert rollout == {
        "schema": 1,
        "plan": None,  # the settings' plan, no rollout_plan_file
        "mode": "shadow",
        "percent": 0.0,
        "stable": {"route": "/labels/stable", "version": None},
        "candidate": {"route": "/labels/canary", "version": None},
        "versions": {},
        "comparison": {
            "pairs": 0,
            "agreements": 0,
            "agreement": None,
            "abs_dp": {"p50": None, "p90": None, "p99": None, "max": None},
            "kept": 0,
            "kept_dir": str(tmp_path / "rollout"),
            "disagreements": 0,
            "kept_failed": 0,
        },
        "shadow_skipped": 0,
        "shadow_skipped_by_reason": {},
        "fallbacks": 0,
    }
    for require, status in ((True, 401), (False, 200)):
        with gateway(tf_serving, tmp_path, api_key="k" * 32, metrics_require_key=require) as gw:
            assert httpx.get(gw.url + "/rollout", timeout=30).status_code == status
            assert httpx.get(gw.url + "/rollout", headers={"x-api-key": "k" * 32}, timeout=30).status_code == 200


def test_rollout_without_a_rollout_says_off_with_the_version_that_answered(tf_serving, tmp_path):
    with gateway(tf_serving, tmp_path) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        client.post("/predict", json=body(RED))
        rollout = client.get("/rollout").json()
    assert rollout["mode"] == "off" and rollout["stable"] == {"route": None, "version": 2}
    assert rollout["versions"]["2"]["role"] == "stable" and rollout["versions"]["2"]["requests"] == 1


@pytest.mark.slow
def test_with_the_real_model_shadow_answers_are_the_bytes_stable_only_serving_gives(
    tmp_path, serving_models, shared_photos
):
    """The builtin model server with two copies of the tiny model (stable=2, the latest, and canary=1),
    real photos: the shadow gateway's answers are byte for byte those of a gateway without a rollout."""
    models = tmp_path / "models"
    source = list_versions(serving_models)[-1][1]
    for version in (1, 2):
        shutil.copytree(source, models / "pizza" / str(version))
    config = tmp_path / "models.config"
    config.write_text(model_config_text("pizza", str(models / "pizza"), [1, 2], {"stable": 2, "canary": 1}))
    server = ModelServerProcess(models, free_port(), args=("--model-config-file", str(config)))
    photos = shared_photos["pizza"][:6] + shared_photos["not_pizza"][:6]
    server.start()
    try:
        server.wait_available("1")
        server.wait_available("2")
        answers = {}
        for name, settings in (("stable only", {}), ("shadow", {"shadow": True})):
            app = create_app(server.url, rollout_dir=tmp_path / "rollout", **settings)
            with UvicornThread(app) as gw, httpx.Client(base_url=gw.url, timeout=60) as client:
                replies = [
                    client.post("/predict", content=p.read_bytes(), headers={"content-type": "image/jpeg"})
                    for p in photos
                ]
                answers[name] = [(r.status_code, r.headers.get("x-model-version"), r.content) for r in replies]
                if name == "shadow":
                    rollout = settle(client, compared(len(photos)))
    finally:
        server.stop()
    assert answers["shadow"] == answers["stable only"]
    assert {(status, version) for status, version, _ in answers["shadow"]} == {(200, "2")}
    comparison = rollout["comparison"]
    assert comparison["pairs"] == len(photos) and comparison["agreement"] == 1.0  # the same model twice
    assert comparison["abs_dp"]["max"] < 1e-3
    assert rollout["versions"]["1"]["role"] == "candidate" and rollout["versions"]["2"]["role"] == "stable"
