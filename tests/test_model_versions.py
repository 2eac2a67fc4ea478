"""Several versions at once in the model server: TF Serving's version policy and version labels."""

from __future__ import annotations

import asyncio
import base64
import shutil

import httpx
import pytest

from pizzactl.model.store import list_versions
from pizzactl.serving.modelserver.versions import (
    ModelConfigError,
    VersionPolicy,
    model_config_text,
    policy_from_text,
)

from support.processes import free_port
from support.serving_fixtures import ModelServerProcess

# TF Serving's own example (https://www.tensorflow.org/tfx/serving/serving_config), with a comment
TF_SERVING_CONFIG = """
model_config_list {
  config {
    name: 'other'
    base_path: '/models/other'
  }
  config {
    name: 'pizza'
    base_path: '/models/pizza'
    model_platform: 'tensorflow'
    model_version_policy {
      specific {
        versions: 1
        versions: 2
      }
    }
    # the one users get, and the one on trial
    version_labels {
      key: 'stable'
      value: 1
    }
    version_labels {
      key: 'canary'
      value: 2
    }
  }
}
"""


def test_tf_servings_model_config_gives_the_policy_and_labels_of_our_model():
    policy = policy_from_text(TF_SERVING_CONFIG, "pizza")
    assert policy.kind == "specific" and policy.versions == (1, 2)
    assert dict(policy.labels) == {"stable": 1, "canary": 2}
    assert policy.select([1, 2, 3]) == [2, 1]
    assert policy_from_text(model_config_text("pizza", "/m/pizza", [3, 4], {"stable": 3}), "pizza") == VersionPolicy(
        "specific", 1, (3, 4), policy.labels.__class__({"stable": 3})
    )


@pytest.mark.parametrize(
    ("policy", "want"),
    [
        ("latest { num_versions: 2 }", [5, 3]),
        ("latest {}", [5]),
        ("all {}", [5, 3, 1]),
        ("specific { versions: 1 versions: 4 }", [1]),
    ],
)
def test_the_version_policy_picks_among_the_versions_on_disk(policy, want):
    text = 'model_config_list { config { name: "pizza" model_version_policy { POLICY } } }'.replace("POLICY", policy)
    assert policy_from_text(text, "pizza").select([1, 3, 5]) == want
    assert VersionPolicy().select([1, 3, 5]) == [5]  # no config file: TF Serving's default, latest 1


@pytest.mark.parametrize(
    "text",
    [
        'model_config_list { config { name: "other" } }',
        'model_config_list { config { name: "pizza" model_version_policy { newest {} } } }',
        'model_config_list { config { name: "pizza" model_version_policy { specific { } } } }',
        'model_config_list { config { name: "pizza" version_labels { key: "stable" value: one } } }',
        'model_config_list { config { name: "pizza" }',
        "model_config_list { config { name: pizza } } }",
    ],
)
def test_a_model_config_it_cannot_follow_is_a_clear_error(text):
    with pytest.raises(ModelConfigError) as caught:
        policy_from_text(text, "pizza")
    assert caught.value.hint


@pytest.mark.slow
def test_two_versions_served_at_once_by_number_and_by_label(tmp_path, serving_models, shared_photos):
    models = tmp_path / "models"
    source = list_versions(serving_models)[-1][1]
    for version in (1, 2, 3):  # 3 is on disk but outside the policy: never loaded
        shutil.copytree(source, models / "pizza" / str(version))
    config = tmp_path / "models.config"
    config.write_text(TF_SERVING_CONFIG)
    args = ("--model-config-file", str(config), "--batch-timeout-ms", "300")
    server = ModelServerProcess(models, free_port(), args=args)
    server.start()
    try:
        server.wait_available("1")
        status = server.wait_available("2")
        assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [
            ("2", "AVAILABLE"),
            ("1", "AVAILABLE"),
        ]
        url = server.url + "/v1/models/pizza"
        body = {"instances": [{"b64": base64.b64encode(shared_photos["pizza"][0].read_bytes()).decode()}]}
        answers = {}
        for path, want in (("", "2"), ("/versions/1", "1"), ("/labels/stable", "1"), ("/labels/canary", "2")):
            reply = httpx.post(f"{url}{path}:predict", json=body, timeout=60)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-model-version"] == want
            answers[path] = reply.json()["predictions"]
        assert answers["/labels/stable"] == answers["/versions/1"]  # the same model either way
        stable = httpx.get(url + "/labels/stable").json()["model_version_status"]
        assert [s["version"] for s in stable] == ["1"]
        assert httpx.get(url + "/labels/canary/metadata").json()["model_spec"]["version"] == "2"

        async def burst():  # both versions' requests queue together: batches mix them
            async with httpx.AsyncClient(timeout=60) as client:
                paths = ["/versions/1", "/labels/canary"] * 6
                return paths, await asyncio.gather(*(client.post(f"{url}{p}:predict", json=body) for p in paths))

        paths, replies = asyncio.run(burst())
        for path, reply in zip(paths, replies, strict=True):
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-model-version"] == ("1" if path == "/versions/1" else "2")
            got, alone = reply.json()["predictions"][0], answers[path][0]
            assert got["label"] == alone["label"]
            assert got["probability"] == pytest.approx(alone["probability"], abs=1e-5)  # batched or alone
        metrics = httpx.get(server.url + "/monitoring/prometheus/metrics").text
        sizes = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line[:1] != "#"}
        assert sizes["pizzactl_model_batch_size_count"] < sizes["pizzactl_model_batch_size_sum"]  # some shared a batch

        unknown = httpx.post(url + "/labels/beta:predict", json=body)
        assert unknown.status_code == 404 and "label" in unknown.json()["error"]
        outside = httpx.post(url + "/versions/3:predict", json=body)
        assert outside.status_code == 404 and "Specific(pizza, 3)" in outside.json()["error"]
    finally:
        server.stop()
