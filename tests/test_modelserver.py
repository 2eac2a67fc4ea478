"""The local model server: TF Serving's REST API, server-side batching, hot reload."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time

import httpx
import pytest

from pizzactl.errors import BadInputError
from pizzactl.model.store import list_versions
from pizzactl.serving.modelserver.batching import Batcher, isolate_failures, isolate_failures_async

from support.processes import free_port
from support.serving_fixtures import ModelServerProcess


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the batcher (pure asyncio, no TensorFlow) ----------------------------------------------


async def test_batcher_combines_concurrent_requests_into_one_batch():
    calls = []

    def run(items):
        calls.append(list(items))
        return [x * 10 for x in items]

    batcher = Batcher(run, max_batch_size=32, timeout=0.5)
    try:
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(5)))
    finally:
        await batcher.stop()
    assert results == [[0], [10], [20], [30], [40]]
    assert calls == [[0, 1, 2, 3, 4]]


async def test_batcher_runs_a_lone_request_at_once_and_batches_what_queues_while_busy():
    import threading

    running, release = threading.Event(), threading.Event()
    calls = []

    def run(items):
        calls.append(list(items))
        if len(calls) == 1:
            running.set()
            release.wait(10)
        return [x * 10 for x in items]

    batcher = Batcher(run, max_batch_size=32, timeout=0.0)
    try:
        first = asyncio.ensure_future(batcher.submit([0]))
        assert await asyncio.to_thread(running.wait, 10)  # dispatched alone, nobody waited for company
        rest = [asyncio.ensure_future(batcher.submit([i])) for i in range(1, 6)]
        for _ in range(5):
            await asyncio.sleep(0)  # let them all queue behind the busy worker
        release.set()
        results = await asyncio.gather(first, *rest)
    finally:
        release.set()
        await batcher.stop()
    assert results == [[0], [10], [20], [30], [40], [50]]
    assert calls == [[0], [1, 2, 3, 4, 5]]


async def test_batcher_respects_max_batch_size_and_keeps_each_requests_order():
    sizes = []

    def run(items):
        sizes.append(len(items))
        return [f"r{x}" for x in items]

    batcher = Batcher(run, max_batch_size=4, timeout=0.2)
    try:
        big = list(range(100, 110))
        results = await asyncio.gather(batcher.submit(big), *(batcher.submit([i]) for i in range(7)))
    finally:
        await batcher.stop()
    assert results[0] == [f"r{x}" for x in big]
    assert results[1:] == [[f"r{i}"] for i in range(7)]
    assert max(sizes) <= 4
    assert sum(sizes) == 17


async def test_batcher_gives_the_error_only_to_the_request_that_caused_it():
    def run(items):
        if "bad" in items:
            raise BadInputError("cannot decode 'bad'")
        return [x.upper() for x in items]

    batcher = Batcher(run, max_batch_size=8, timeout=0.2)
    try:
        results = await asyncio.gather(
            batcher.submit(["a"]), batcher.submit(["bad"]), batcher.submit(["c", "d"]), return_exceptions=True
        )
    finally:
        await batcher.stop()
    assert results[0] == ["A"]
    assert isinstance(results[1], BadInputError)
    assert results[2] == ["C", "D"]


def _versions(path):
    return [n for n, _ in list_versions(path.parent, path.name)]


def test_a_version_is_an_integer_directory_with_a_saved_model(tmp_path):
    """What the model server serves is what model_store lists (deploy, evaluate and explain use it too)."""
    from pizzactl.model.store import next_version

    base = tmp_path / "pizza"
    for name in ("1", "3", ".tmp-123-abc", "notes"):
        (base / name).mkdir(parents=True)
        (base / name / "saved_model.pb").write_bytes(b"x")
    (base / "7").mkdir()  # being copied in: no saved_model.pb yet
    assert _versions(base) == [1, 3]
    assert next_version(tmp_path) == 8  # an export never takes the number of a directory being copied in
    assert _versions(tmp_path / "missing" / "pizza") == []


def test_isolate_failures_reruns_parts_alone_only_when_the_batch_fails():
    calls = []

    def run(items):
        calls.append(list(items))
        if "bad" in items:
            raise BadInputError("bad item")
        return [x.upper() for x in items]

    assert isolate_failures(run, [["a"], ["b", "c"]]) == [["A"], ["B", "C"]]
    assert calls == [["a", "b", "c"]]
    calls.clear()
    outcomes = isolate_failures(run, [["a"], ["bad"], ["c"]], BadInputError)
    assert outcomes[0] == ["A"] and outcomes[2] == ["C"] and isinstance(outcomes[1], BadInputError)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    with pytest.raises(KeyError):  # not the input's fault: not isolated
        isolate_failures(lambda items: {}["x"], [["a"], ["b"]], BadInputError)


async def test_isolate_failures_async_does_the_same_on_an_event_loop():
    async def run(items):
        if "bad" in items:
            raise BadInputError("bad item")
        return [x * 2 for x in items]

    outcomes = await isolate_failures_async(run, [["a"], ["bad"], ["c", "d"]], BadInputError)
    assert outcomes[0] == ["aa"] and isinstance(outcomes[1], BadInputError) and outcomes[2] == ["cc", "dd"]
    lone = await isolate_failures_async(run, [["bad"]], BadInputError)
    assert len(lone) == 1 and isinstance(lone[0], BadInputError)


# --- the real server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ms(model_server) -> str:
    return model_server.url + "/v1/models/pizza"


@pytest.mark.slow
def test_status_reports_the_version_available_as_tf_serving_does(ms, serving_models):
    response = httpx.get(ms)
    assert response.status_code == 200
    expected_version = str(max(_versions(serving_models / "pizza")))
    assert response.json() == {
        "name": "pizza",
        "ready": True,  # KServe's v1 client reads these two (test_kserve_protocols)
        "model_version_status": [
            {"version": expected_version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ],
    }


@pytest.mark.slow
def test_metadata_has_tf_serving_signature_defs_and_pizzactl_json(ms, serving_models):
    body = httpx.get(ms + "/metadata").json()
    version = str(max(_versions(serving_models / "pizza")))
    assert body["model_spec"] == {"name": "pizza", "signature_name": "", "version": version}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    default = sigs["serving_default"]
    assert default["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert default["inputs"]["image_bytes"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert set(default["outputs"]) == {"probability", "label", "probabilities"}
    assert default["outputs"]["probability"]["dtype"] == "DT_FLOAT"
    assert sigs["serving_pixels"]["inputs"]["pixels"]["dtype"] == "DT_UINT8"
    meta = json.loads((serving_models / "pizza" / version / "assets.extra" / "pizzactl.json").read_text())
    assert body["metadata"]["pizzactl"] == meta
    assert body["metadata"]["pizzactl"]["image_size"] == 64


@pytest.mark.slow
def test_predict_accepts_every_tf_serving_request_form_and_agrees(ms, shared_photos):
    photos = [shared_photos["pizza"][0].read_bytes(), shared_photos["not_pizza"][0].read_bytes()]
    rows = httpx.post(ms + ":predict", json={"instances": [{"b64": b64(p)} for p in photos]})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert len(predictions) == 2
    for p in predictions:
        assert set(p) == {"probability", "label", "probabilities"}
        assert p["probabilities"][1] == p["probability"]
        assert 0.0 <= p["probability"] <= 1.0
        assert p["label"] == ("pizza" if p["probability"] >= 0.5 else "not_pizza")
    named = httpx.post(ms + ":predict", json={"instances": [{"image_bytes": {"b64": b64(p)}} for p in photos]}).json()
    assert named == rows.json()
    columnar = httpx.post(ms + ":predict", json={"inputs": {"image_bytes": [{"b64": b64(p)} for p in photos]}}).json()
    assert columnar["outputs"]["probability"] == [p["probability"] for p in predictions]
    assert columnar["outputs"]["label"] == [p["label"] for p in predictions]
    version = rows.headers["x-model-version"]
    pinned = httpx.post(f"{ms}/versions/{version}:predict", json={"instances": [{"b64": b64(photos[0])}]})
    assert pinned.status_code == 200
    assert pinned.json()["predictions"][0] == predictions[0]


@pytest.mark.slow
def test_signature_name_selects_the_pixels_signature(ms):
    size = httpx.get(ms + "/metadata").json()["metadata"]["pizzactl"]["image_size"]
    red = [[[220, 40, 30]] * size] * size
    response = httpx.post(ms + ":predict", json={"signature_name": "serving_pixels", "instances": [red, red]})
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert first == second
    assert 0.0 <= first["probability"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        (":predict", b"{not json", 400, "JSON"),
        (":predict", b"[1, 2]", 400, "object"),
        (":predict", json.dumps({"instances": [{"b64": "***"}]}).encode(), 400, "base64"),
        (":predict", json.dumps({"instances": [{"b64": b64(b"definitely not an image")}]}).encode(), 400, ""),
        (":predict", json.dumps({"foo": 1}).encode(), 400, "instances"),
        (":predict", json.dumps({"instances": []}).encode(), 400, "empty"),
        (":predict", json.dumps({"instances": [{"b64": "AA=="}], "signature_name": "nope"}).encode(), 400, "nope"),
        ("/versions/999:predict", json.dumps({"instances": [{"b64": "AA=="}]}).encode(), 404, "Specific(pizza, 999)"),
        # nesting deeper than Python's recursion: the parser's, or later code's (issue 24)
        (":predict", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested"),
        (":predict", b'{"instances": ' + b"[" * 900 + b"]" * 900 + b"}", 400, "nested"),
        (
            ":predict",
            json.dumps({"signature_name": "serving_pixels", "instances": [[[1, 2, 3]]]}).encode(),
            400,
            "shape",
        ),
    ],
)
def test_bad_requests_get_tf_serving_errors_and_the_server_stays_up(ms, path, body, status, fragment):
    response = httpx.post(ms + path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert fragment in response.json()["error"]
    assert httpx.get(ms).status_code == 200


@pytest.mark.slow
def test_unknown_models_and_routes_are_404_and_wrong_methods_405_in_tf_servings_shape(model_server):
    for path in (
        "/v1/models/margherita",
        "/v1/models/margherita/metadata",
        "/nothing/here",
        "/v1/models/pizza/versions/x",
    ):
        response = httpx.get(model_server.url + path)
        assert response.status_code == 404
        assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)
    for method, path in (
        ("GET", "/v1/models/pizza:predict"),
        ("POST", "/v1/models/pizza"),
        ("DELETE", "/v1/models/pizza/metadata"),
    ):
        response = httpx.request(method, model_server.url + path)
        assert response.status_code == 405, (method, path)
        assert set(response.json()) == {"error"}
    classify = httpx.post(model_server.url + "/v1/models/pizza:classify", json={"examples": []})
    assert classify.status_code == 400 and "not supported" in classify.json()["error"]


@pytest.mark.slow
def test_a_bad_image_in_a_combined_batch_does_not_fail_the_others(ms, shared_photos):
    good = b64(shared_photos["pizza"][1].read_bytes())

    async def go():
        async with httpx.AsyncClient(timeout=30) as client:
            requests = [
                client.post(ms + ":predict", json={"instances": [{"b64": b64(b"garbage") if i == 3 else good}]})
                for i in range(8)
            ]
            return await asyncio.gather(*requests)

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 200, 200, 200, 200]


# --- runtimes ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_default_runtime_is_the_checked_litert_artefact_and_tensorflow_answers_alike(
    ms, model_server, tf_only_model, shared_photos, tmp_path
):
    """auto serves the LiteRT artefact export checked, on every usable CPU; asked for one the version
    does not have (an export from before LiteRT), the server falls back to TensorFlow and says so.
    Both answer the same, metadata included."""
    from pizzactl.model.runtimes import usable_cpus

    photos = [b64(p.read_bytes()) for p in shared_photos["pizza"][50:53] + shared_photos["not_pizza"][50:53]]
    body = {"instances": [{"b64": p} for p in photos]}
    litert_meta = httpx.get(ms + "/metadata").json()["metadata"]
    assert litert_meta["runtime"] == "litert"
    cpus = usable_cpus()
    log_text = model_server.log_path.read_text()
    split = f", batches split over {cpus} one-thread interpreters" if cpus > 1 else ""
    assert f"on litert, {cpus} thread{'s' * (cpus != 1)}{split} (" in log_text
    assert f"TensorFlow threads: {cpus} intra-op, 1 inter-op" in log_text  # decoding runs on TensorFlow
    fallback = ModelServerProcess(
        tf_only_model, free_port(), args=("--runtime", "litert"), log_path=tmp_path / "ms.log"
    )
    fallback.start()
    try:
        fallback.wait_available()
        url = fallback.url + "/v1/models/pizza"
        tf_meta = httpx.get(url + "/metadata").json()["metadata"]
        assert tf_meta["runtime"] == "tensorflow"
        assert "litert runtime for" in fallback.log_path.read_text() and "falling back" in fallback.log_path.read_text()
        assert tf_meta["signature_def"] == litert_meta["signature_def"]  # TF Serving's metadata either way
        want = httpx.post(url + ":predict", json=body).json()["predictions"]
    finally:
        fallback.stop()
    got = httpx.post(ms + ":predict", json=body).json()["predictions"]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert max(abs(g["probability"] - w["probability"]) for g, w in zip(got, want, strict=True)) <= 1e-4


@pytest.mark.slow
def test_a_batch_split_over_one_thread_interpreters_answers_as_one_interpreter_does(tiny_model, shared_photos):
    """litert_split: a batch of several images is cut into parts (uneven ones too) that run at
    once on one-thread interpreters; every image gets the answer, in its place, that the one
    multi-thread interpreter gives it. A lone image and an empty batch still answer."""
    import numpy as np

    from pizzactl.model.runtimes import SIGNATURE, LiteRTRuntime

    version = tiny_model / "pizza" / "1"
    photos = [p.read_bytes() for p in shared_photos["pizza"][50:54] + shared_photos["not_pizza"][50:53]]
    whole = LiteRTRuntime.load(version, 1, "litert", threads=2)
    split = LiteRTRuntime.load(version, 1, "litert", threads=2, split=3)  # 7 images: parts of 3, 2 and 2
    assert split.split == 3 and whole.split == 1
    for batch in (photos, photos[:2], photos[:1]):
        want, got = (rt.run(SIGNATURE, {"image_bytes": batch}) for rt in (whole, split))
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
        assert list(got["label"]) == list(want["label"])
    assert split.run(SIGNATURE, {"image_bytes": []})["probabilities"].shape[0] == 0
    assert len({round(float(p), 4) for p in split.run(SIGNATURE, {"image_bytes": photos})["probability"]}) > 1


# --- how many CPUs: a container's --cpus or a pod's CPU limit --------------------------------


@pytest.mark.parametrize(
    ("files", "want"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: "$MAX $PERIOD" (kernel docs, cgroup-v2.rst)
        ({"cpu.max": "max 100000\n"}, None),  # "max": no limit
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1 (sched-bwc.rst)
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1: -1 is no limit
        ({}, None),  # no cgroup CPU controller (macOS, some sandboxes)
    ],
)
def test_the_cpu_quota_is_read_from_cgroup_v2_or_v1(tmp_path, files, want):
    from pizzactl.model.runtimes import cgroup_cpu_quota

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == want


def test_thread_pools_are_sized_to_the_quota_not_to_the_hosts_cpus(tmp_path):
    import os

    from pizzactl.model.runtimes import usable_cpus

    host = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == host
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets a thread
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{100000 * (host + 4)} 100000\n")  # a quota above the host's CPUs
    assert usable_cpus(tmp_path) == host


# --- a server of its own: empty folder, hot reload, batching --------------------------------


@pytest.mark.slow
def test_server_starts_without_a_model_then_hot_loads_new_versions(tmp_path, serving_models, shared_photos):
    models = tmp_path / "models"
    server = ModelServerProcess(models, free_port(), args=("--batch-timeout-ms", "300"))
    server.start()
    try:
        url = server.url + "/v1/models/pizza"
        deadline = time.monotonic() + 120
        while True:  # the process is up (and not crashing) before any model exists
            try:
                empty = httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                assert server.proc.poll() is None, server.log_path.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert empty.status_code == 404
        assert str(models / "pizza") in empty.json()["error"]
        assert "pizzactl export" in empty.json()["error"]

        source = serving_models / "pizza" / str(max(_versions(serving_models / "pizza")))
        (models / "pizza").mkdir(parents=True)
        shutil.copytree(source, models / "pizza" / ".tmp-1")
        (models / "pizza" / ".tmp-1").rename(models / "pizza" / "1")  # what an export does
        server.wait_available("1")

        shutil.copytree(source, models / "pizza" / ".tmp-2")
        meta_path = models / "pizza" / ".tmp-2" / "assets.extra" / "pizzactl.json"
        meta = json.loads(meta_path.read_text())
        meta["note"] = "version two"
        meta_path.write_text(json.dumps(meta))
        (models / "pizza" / ".tmp-2").rename(models / "pizza" / "2")
        status = server.wait_available("2")
        assert [s["version"] for s in status["model_version_status"]] == ["2"]
        metadata = httpx.get(url + "/metadata").json()
        assert metadata["model_spec"]["version"] == "2"
        assert metadata["metadata"]["pizzactl"]["note"] == "version two"

        # concurrent requests are run as shared batches (batch timeout 300 ms here)
        photo = b64(shared_photos["pizza"][0].read_bytes())

        async def burst():
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(
                    *(client.post(url + ":predict", json={"instances": [{"b64": photo}]}) for _ in range(12))
                )

        responses = asyncio.run(burst())
        assert all(r.status_code == 200 and r.headers["x-model-version"] == "2" for r in responses)
        metrics = httpx.get(server.url + "/monitoring/prometheus/metrics").text
        batches = _metric(metrics, "pizzactl_model_batch_size_count")
        images = _metric(metrics, "pizzactl_model_batch_size_sum")
        assert images >= 12
        assert batches < images  # some requests shared a batch

        shutil.rmtree(models / "pizza" / "2")  # deleting the newest version rolls back
        status = server.wait_available("1")
        assert [s["version"] for s in status["model_version_status"]] == ["1"]
    finally:
        server.stop()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")
