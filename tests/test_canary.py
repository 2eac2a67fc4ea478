"""The gateway's canary split: a share of requests to the candidate version, the rest to stable,
and stable answers whatever the candidate cannot (issue 23)."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from PIL import Image

from pizzactl.errors import ConfigError
from pizzactl.serving.gateway import create_app

from support.serving_fixtures import FakeTFServing, UvicornThread

STABLE = {"label": "not_pizza", "probabilities": [0.8, 0.2], "probability": 0.2}
CANDIDATE = {"label": "pizza", "probabilities": [0.3, 0.7], "probability": 0.7}


def image_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def tf_serving():
    """TF Serving with versions 1 (labelled stable) and 2 (labelled canary), as a model config sets them."""
    fake = FakeTFServing(versions={1: STABLE, 2: CANDIDATE}, labels={"stable": 1, "canary": 2})
    yield fake
    fake.close()


def _ask(client: httpx.Client, body: dict) -> tuple[int, int]:
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert reply.headers["x-model-version"] == str(answer["model_version"])
    assert answer["label"] == {1: "not_pizza", 2: "pizza"}[answer["model_version"]]  # the model that answered
    return answer["model_version"], reply.status_code


@pytest.mark.parametrize("percent", [10, 37.5])
def test_the_candidate_gets_the_asked_share_of_requests_and_says_so(tf_serving, percent):
    body = {"image_b64": image_b64()}
    with (
        UvicornThread(create_app(tf_serving.url, canary_percent=percent, classes="not_pizza,pizza")) as gw,
        httpx.Client(base_url=gw.url, timeout=30) as client,
    ):
        versions = [_ask(client, body)[0] for _ in range(1000)]
        deadline = time.monotonic() + 60  # the comparisons run in the background: wait until they are done
        while client.get("/rollout").json()["comparison"]["pairs"] < versions.count(2) and time.monotonic() < deadline:
            time.sleep(0.05)
    share = 100 * versions.count(2) / len(versions)
    assert abs(share - percent) <= 2, share
    assert versions.count(1) + versions.count(2) == 1000
    # stable also answered each canary request in the background, for the comparison (/rollout)
    assert tf_serving.predicts_by_version == {1: 1000, 2: versions.count(2)}


def test_a_candidate_that_dies_mid_run_loses_no_request(tf_serving):
    body = {"image_b64": image_b64()}
    with (
        UvicornThread(create_app(tf_serving.url, canary_percent=50, classes="not_pizza,pizza")) as gw,
        httpx.Client(base_url=gw.url, timeout=30) as client,
    ):
        before = [_ask(client, body)[0] for _ in range(500)]
        tf_serving.unloaded.add(2)  # the candidate is gone (its version unloaded, its server killed)
        after = [_ask(client, body)[0] for _ in range(500)]
        metrics = client.get("/metrics").text
    assert 200 <= before.count(2) <= 300
    assert after == [1] * 500  # every request answered, by stable
    fallbacks = [line for line in metrics.splitlines() if line.startswith("pizzactl_gateway_canary_fallbacks_total")]
    assert fallbacks and float(fallbacks[0].split()[-1]) == 250


def test_without_a_canary_requests_go_to_the_latest_version_as_before(tf_serving):
    with UvicornThread(create_app(tf_serving.url, classes="not_pizza,pizza")) as gw:
        reply = httpx.post(gw.url + "/predict", json={"image_b64": image_b64()}, timeout=30)
    assert reply.json()["model_version"] == 2 and reply.headers["x-model-version"] == "2"
    assert tf_serving.predicts_by_version == {2: 1}


@pytest.mark.parametrize("percent", [-1, 100.5])
def test_a_canary_share_outside_0_to_100_is_refused(percent):
    with pytest.raises(ConfigError) as caught:
        create_app("http://127.0.0.1:9", canary_percent=percent)
    assert "canary" in caught.value.hint.lower() or "0" in caught.value.hint
