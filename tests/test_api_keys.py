"""Optional API keys at the gateway (serving/auth.py): 401 before anything is done for the
request, probes stay open, /metrics as set, a rate per key, keys never printed or logged, and
the key's way from `--api-key` / PIZZACTL_API_KEY to the gateway (only as a digest) and to
`pizzactl predict`."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from pizzactl.config import load_settings
from pizzactl.errors import ConfigError
from pizzactl.serving.auth import RateLimiter, accepted_hashes, key_env, key_hash
from pizzactl.serving.gateway import create_app

from support.cli import run_pizzactl
from support.processes import free_port
from support.serving_fixtures import FakeTFServing, LocalHTTPServer, UvicornThread

KEY = "pk-test-7f3a9c1e5b"  # what must never appear in an output or a log
OTHER_KEY = "pk-test-other-2d4b"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


class CountingPhotos(LocalHTTPServer):
    """A web server with one photo; counts the gateway's URL fetches."""

    def __init__(self):
        self.fetches = 0
        fake, photo = self, png()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.fetches += 1
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(photo)))
                self.end_headers()
                self.wfile.write(photo)

        super().__init__(Handler)


@pytest.fixture
def upstreams():
    model = FakeTFServing({"label": "pizza", "probabilities": [0.1, 0.9], "probability": 0.9})
    photos = CountingPhotos()
    yield model, photos
    model.close()
    photos.close()


def test_without_a_valid_key_nothing_reaches_the_model_server_or_the_fetcher(upstreams):
    model, photos = upstreams
    app = create_app(model.url, allow_private_urls=True, api_key_hashes=key_hash(KEY))
    url_body = {"url": photos.url + "/pizza.png"}
    with UvicornThread(app) as gw, httpx.Client(base_url=gw.url, timeout=10) as client:
        refused = [
            client.post("/predict", json=url_body),
            client.post("/predict", json={"image_b64": base64.b64encode(png()).decode()}),
            client.post("/predict", files={"file": ("a.png", png(), "image/png")}),
            client.post("/predict/batch", json=[url_body]),
            client.post("/predict", json=url_body, headers={"Authorization": f"Bearer {OTHER_KEY}"}),
            client.post("/predict", json=url_body, headers={"X-API-Key": OTHER_KEY}),
            client.post("/predict", json=url_body, headers={"Authorization": f"Basic {KEY}"}),
            client.post(f"/predict?api_key={KEY}", json=url_body),  # not in URLs: they end in logs
            client.get("/metrics"),
        ]
        for response in refused:
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == "unauthorized"
            assert "Bearer" in response.json()["error"]["hint"]
            assert response.headers["www-authenticate"] == 'Bearer realm="pizzactl"'
        assert (model.predicts, photos.fetches) == (0, 0)

        # probes, the page (it asks for the key) and the API docs stay open
        for path in ("/healthz", "/readyz", "/", "/static/app.js", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 200, path

        bearer = client.post("/predict", json=url_body, headers={"Authorization": f"Bearer {KEY}"})
        header = client.post("/predict", files={"file": ("a.png", png(), "image/png")}, headers={"X-API-Key": KEY})
        assert bearer.status_code == header.status_code == 200, (bearer.text, header.text)
        assert bearer.json()["label"] == "pizza"
        assert (model.predicts, photos.fetches) == (2, 1)
        metrics = client.get("/metrics", headers={"X-API-Key": KEY})
        assert metrics.status_code == 200
        assert 'route="unmatched",status="401"' in metrics.text  # refusals are counted


def test_metrics_may_stay_open_and_no_keys_means_an_open_gateway(upstreams):
    model, _ = upstreams
    with UvicornThread(create_app(model.url, api_key=KEY, metrics_require_key=False)) as gw:
        assert httpx.get(gw.url + "/metrics", timeout=10).status_code == 200
        assert httpx.post(gw.url + "/predict", json={"image_b64": "AAAA"}, timeout=10).status_code == 401
    with UvicornThread(create_app(model.url)) as gw:
        assert httpx.get(gw.url + "/metrics", timeout=10).status_code == 200
        png_b64 = base64.b64encode(png()).decode()
        assert httpx.post(gw.url + "/predict", json={"image_b64": png_b64}, timeout=10).status_code == 200


def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not(upstreams):
    model, _ = upstreams
    hashes = f"{key_hash(KEY)},{key_hash(OTHER_KEY)}"
    app = create_app(model.url, api_key_hashes=hashes, api_key_rate=0.5, api_key_burst=2)
    with UvicornThread(app) as gw, httpx.Client(base_url=gw.url, timeout=10) as client:
        mine = [client.get("/metrics", headers={"X-API-Key": KEY}).status_code for _ in range(3)]
        limited = client.get("/metrics", headers={"X-API-Key": KEY})
        other = client.get("/metrics", headers={"X-API-Key": OTHER_KEY})
    assert mine[:2] == [200, 200] and mine[2] == 429
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 2
    assert other.status_code == 200


def test_the_token_bucket_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0])
    assert [limiter.take("k"), limiter.take("k")] == [0.0, 0.0]
    assert limiter.take("k") == pytest.approx(0.5)
    now[0] = 0.5
    assert limiter.take("k") == 0.0
    assert RateLimiter(rate=0, burst=1).take("k") == 0.0  # no rate: no limit


def test_key_settings_are_digests_and_the_key_itself_is_never_shown():
    assert accepted_hashes(None, None) == frozenset()
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    assert accepted_hashes(KEY, None) == {digest}
    assert accepted_hashes(None, f" sha256:{digest.upper()} , {key_hash(OTHER_KEY)}") == {digest, key_hash(OTHER_KEY)}
    with pytest.raises(ConfigError):
        accepted_hashes(None, KEY)  # a key where a digest belongs is refused, not accepted as is
    settings = load_settings(environ={"PIZZACTL_API_KEY": KEY})
    assert KEY not in repr(settings) and settings.as_dict()["api_key"] == "(set)"
    env = key_env(settings)
    assert env == {"PIZZACTL_API_KEY": "", "PIZZACTL_API_KEY_HASHES": digest}  # blanked: the child has no key
    assert load_settings(environ=env).api_key is None


def run_clean(tmp_path, *args, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIZZACTL_")}
    clean.update(PIZZACTL_STATE_DIR=str(tmp_path / "state"), PIZZACTL_CONFIG=str(tmp_path / "none.toml"), **env)
    return run_pizzactl(*args, env=clean, cwd=tmp_path, timeout=120)


def test_predict_sends_the_key_from_the_flag_or_the_environment_and_never_prints_it(upstreams, tmp_path):
    model, _ = upstreams
    photo = tmp_path / "a.png"
    photo.write_bytes(png())
    with UvicornThread(create_app(model.url, api_key_hashes=key_hash(KEY))) as gw:
        by_flag = run_clean(tmp_path, "predict", "--endpoint", gw.url, "--api-key", KEY, "--json", str(photo))
        by_env = run_clean(tmp_path, "predict", "--endpoint", gw.url, "--json", str(photo), PIZZACTL_API_KEY=KEY)
        without = run_clean(tmp_path, "predict", "--endpoint", gw.url, "--json", str(photo))
        shown = run_clean(tmp_path, "config", "show", "--json", PIZZACTL_API_KEY=KEY)
    for proc in (by_flag, by_env):
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["label"] == "pizza"
    assert without.returncode == 1
    assert "API key" in json.loads(without.stdout)[0]["error"]
    assert json.loads(shown.stdout)["api_key"] == {"value": "(set)", "source": "PIZZACTL_API_KEY"}
    for proc in (by_flag, by_env, without, shown):
        assert KEY not in proc.stdout + proc.stderr


def test_the_gateway_process_never_logs_a_key(upstreams, tmp_path):
    """`python -m pizzactl.serving.gateway` with the key in its environment, debug logs and an
    access log, asked with the key, a wrong key and a key in the query string."""
    model, _ = upstreams
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIZZACTL_")}
    env.update(PIZZACTL_API_KEY=KEY, PIZZACTL_API_KEY_HASHES=key_hash(OTHER_KEY), PIZZACTL_CONFIG="none.toml")
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "pizzactl.serving.gateway", "--model-url", model.url, "--port", str(port)),
                *("--log-level", "debug", "--access-log"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.1)
        png_b64 = base64.b64encode(png()).decode()
        for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {OTHER_KEY}"}, {"X-API-Key": KEY + "x"}):
            httpx.post(url + "/predict", json={"image_b64": png_b64}, headers=headers, timeout=10)
        httpx.get(url + f"/metrics?api_key={KEY}", timeout=10)
        assert httpx.get(url + "/metrics", headers={"X-API-Key": KEY}, timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
    text = log.read_text()
    assert "API keys required: 2 accepted" in text
    assert "/predict" in text  # the access log ran
    assert KEY not in text.replace(f"api_key={KEY}", "")  # only where the client itself put it in the URL
    assert OTHER_KEY not in text


def test_deploy_renders_only_digests_for_the_cluster_and_docker(tmp_path):
    from pizzactl.deploy import manifests
    from pizzactl.deploy.targets.docker import container_specs

    settings = load_settings({"api_key": KEY}, environ={})
    docs = manifests.render(settings, "g:1", "m:1")
    text = manifests.to_yaml(docs)
    assert KEY not in text and base64.b64encode(KEY.encode()).decode() not in text
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "pizzactl-api-keys")
    assert base64.b64decode(secret["data"]["hashes"]).decode() == key_hash(KEY)
    assert [d["kind"] for d in docs].index("Secret") < [d["metadata"]["name"] for d in docs].index("pizzactl-gateway")
    gateway = next(s for s in container_specs(settings, docs) if s["name"] == "pizzactl-gateway")
    assert gateway["environment"]["PIZZACTL_API_KEY_HASHES"] == key_hash(KEY)

    def annotation(docs):
        dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pizzactl-gateway")
        return dep["spec"]["template"]["metadata"]["annotations"]["pizzactl.dev/api-keys"]

    open_docs = manifests.render(load_settings({}, environ={}), "g:1", "m:1")
    assert annotation(open_docs) == "none" != annotation(docs)  # new keys roll the gateway's pods
    open_gateway = next(s for s in container_specs(settings, open_docs) if s["name"] == "pizzactl-gateway")
    assert open_gateway["environment"]["PIZZACTL_API_KEY_HASHES"] == ""


@pytest.mark.slow
def test_deploy_local_with_a_key_protects_the_gateway_and_no_process_or_file_holds_the_key(tiny_model, tmp_path):
    """`PIZZACTL_API_KEY=... pizzactl deploy --target local`: 401 without the key, answers with it
    (predict sends it from the same variable); the servers' environments hold the digest, not the
    key, and neither do the state file or the logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIZZACTL_")}
    env.update(
        PIZZACTL_STATE_DIR=str(tmp_path / "state"),
        PIZZACTL_MODELS_DIR=str(tiny_model),
        PIZZACTL_PORT=str(free_port()),
        PIZZACTL_MODEL_PORT=str(free_port()),
        PIZZACTL_CONFIG=str(tmp_path / "none.toml"),
        PIZZACTL_API_KEY=KEY,
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="-1",
    )

    def cli(*args, **extra):
        return run_pizzactl(*args, env={**env, **extra}, cwd=tmp_path, timeout=300)

    photo = tmp_path / "a.png"
    photo.write_bytes(png())
    deployed = cli("deploy", "--target", "local", "--json", "--timeout", "240")
    try:
        assert deployed.returncode == 0, deployed.stderr
        url = json.loads(deployed.stdout)["url"]
        assert httpx.get(url + "/readyz", timeout=10).status_code == 200
        assert (
            httpx.post(url + "/predict", files={"file": ("a.png", png(), "image/png")}, timeout=30).status_code == 401
        )
        answered = cli("predict", "--json", str(photo))
        assert answered.returncode == 0, answered.stderr
        assert json.loads(answered.stdout)[0]["label"] in ("pizza", "not_pizza")
        state_file = tmp_path / "state" / "deploy.json"
        state = json.loads(state_file.read_text())
        environments = {name: Path(f"/proc/{pid}/environ").read_bytes() for name, pid in state["pids"].items()}
        assert f"PIZZACTL_API_KEY_HASHES={key_hash(KEY)}".encode() in environments["gateway"].split(b"\0")
        written = [state_file.read_text(), *(Path(p).read_text(errors="replace") for p in state["logs"].values())]
        for text in [*(e.decode(errors="replace") for e in environments.values()), *written]:
            assert KEY not in text
        for output in (deployed, answered):
            assert KEY not in output.stdout + output.stderr
    finally:
        cli("teardown")


def test_a_gateway_given_a_key_where_a_digest_belongs_stops_with_the_fix(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIZZACTL_")}
    env.update(PIZZACTL_API_KEY_HASHES=KEY, PIZZACTL_CONFIG=str(tmp_path / "none.toml"))
    proc = subprocess.run(
        [sys.executable, "-m", "pizzactl.serving.gateway", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 3
    assert "SHA-256 hex digests" in proc.stderr and "sha256sum" in proc.stderr
    assert "Traceback" not in proc.stderr and KEY not in proc.stderr
