"""A rollout change without a restart (issue 23): the model server re-reads its model config
(TF Serving's --model_config_file_poll_wait_seconds, availability preserving: load, move the
labels, then unload) and the gateway re-reads its rollout plan file, neither dropping a request."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import signal
import threading
import time

import httpx
import pytest
from PIL import Image

from pizzactl.files import atomic_write
from pizzactl.model.store import list_versions
from pizzactl.serving.gateway import create_app
from pizzactl.serving.modelserver.versions import model_config_text

from support.cli import make_env, run_pizzactl
from support.processes import alive, free_port
from support.serving_fixtures import FakeTFServing, ModelServerProcess, UvicornThread

STABLE = {"label": "not_pizza", "probabilities": [0.8, 0.2], "probability": 0.2}
CANDIDATE = {"label": "pizza", "probabilities": [0.3, 0.7], "probability": 0.7}


def png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Sender(threading.Thread):
    """Sends one request after another, without a pause, until stopped; keeps (status, version) of each."""

    def __init__(self, send):
        super().__init__(daemon=True)
        self.send, self.seen, self.done = send, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.seen.append(self.send())

    def __enter__(self) -> Sender:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join(timeout=120)

    def wait_for(self, n: int) -> None:
        """Until n more answers arrived (so each phase is exercised under load)."""
        want, deadline = len(self.seen) + n, time.monotonic() + 120
        while len(self.seen) < want and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.02)


def _until(check, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _label(url: str, label: str) -> str | None:
    reply = httpx.get(f"{url}/v1/models/pizza/labels/{label}", timeout=5)
    return reply.json()["model_version_status"][0]["version"] if reply.status_code == 200 else None


def _loaded(url: str) -> list[str]:
    status = httpx.get(f"{url}/v1/models/pizza", timeout=5).json()["model_version_status"]
    return [s["version"] for s in status if s["state"] == "AVAILABLE"]


@pytest.mark.slow
def test_the_model_server_takes_a_new_model_config_without_losing_a_request(tmp_path, serving_models, shared_photos):
    models = tmp_path / "models"
    for version in (1, 2):
        shutil.copytree(list_versions(serving_models)[-1][1], models / "pizza" / str(version))
    config = tmp_path / "models.config"
    atomic_write(config, model_config_text("pizza", str(models / "pizza"), [1], {"stable": 1}))
    server = ModelServerProcess(models, free_port(), args=("--model-config-file", str(config))).start()
    body = {"instances": [{"b64": base64.b64encode(shared_photos["pizza"][0].read_bytes()).decode()}]}

    def send() -> tuple[int, str | None]:
        reply = httpx.post(f"{server.url}/v1/models/pizza/labels/stable:predict", json=body, timeout=60)
        return reply.status_code, reply.headers.get("x-model-version")

    try:
        server.wait_available("1")
        with Sender(send) as sender:
            sender.wait_for(5)
            # a trial: version 2 loads beside 1; the label canary points at it once it is AVAILABLE
            atomic_write(config, model_config_text("pizza", str(models / "pizza"), [1, 2], {"stable": 1, "canary": 2}))
            _until(lambda: _label(server.url, "canary") == "2", "the label canary on version 2")
            sender.wait_for(5)
            # promote: stable moves to 2 (already loaded), then 1 is unloaded
            atomic_write(config, model_config_text("pizza", str(models / "pizza"), [2], {"stable": 2}))
            _until(lambda: _loaded(server.url) == ["2"], "version 1 unloaded")
            sender.wait_for(5)
            # a config it cannot read changes nothing: logged, the old one stays
            atomic_write(config, "model_config_list { config {")
            _until(lambda: "kept the model config in use" in server.log_path.read_text(), "the log line")
            sender.wait_for(5)
        assert _label(server.url, "stable") == "2" and _label(server.url, "canary") is None
    finally:
        server.stop()
    assert {status for status, _ in sender.seen} == {200}, sender.seen
    versions = [v for _, v in sender.seen]
    flip = versions.index("2")
    assert set(versions[:flip]) == {"1"} and set(versions[flip:]) == {"2"}  # one flip, never back


def test_the_gateway_takes_a_new_rollout_plan_without_a_restart(tmp_path, caplog):
    fake = FakeTFServing(versions={1: STABLE, 2: CANDIDATE}, labels={"stable": 1, "canary": 2})
    plan_file = tmp_path / "rollout.json"

    def plan(plan_id: str, **settings) -> None:
        atomic_write(plan_file, json.dumps({"plan": plan_id, "canary_version": "canary", **settings}))

    plan("a", canary_percent=50)
    app = create_app(fake.url, rollout_plan_file=plan_file, poll_seconds=0.05, classes="not_pizza,pizza")
    caplog.set_level(logging.INFO, logger="pizzactl.gateway")
    try:
        with UvicornThread(app) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
            photo = {"image_b64": png_b64()}

            def send() -> tuple[int, int]:
                reply = client.post("/predict", json=photo)
                return reply.status_code, int(reply.headers.get("x-model-version", 0))

            def plan_in_use() -> dict:
                return client.get("/rollout").json()

            assert (plan_in_use()["plan"], plan_in_use()["mode"], plan_in_use()["percent"]) == ("a", "canary", 50)
            first = [send() for _ in range(20)]
            assert sorted(first) == [(200, 1)] * 10 + [(200, 2)] * 10  # the plan read at start
            plan("b", shadow=True)
            _until(lambda: plan_in_use()["plan"] == "b", "plan b in /rollout")
            assert plan_in_use()["mode"] == "shadow" and plan_in_use()["versions"] == {}  # counts start again
            assert {send() for _ in range(10)} == {(200, 1)}  # users get stable's answers
            plan("c", canary_percent=50, shadow=True)  # both at once: refused, b stays
            _until(lambda: "kept the rollout plan in use" in caplog.text, "the log line about plan c")
            assert (plan_in_use()["plan"], plan_in_use()["mode"]) == ("b", "shadow")
            plan("d", canary_percent=0)
            _until(lambda: plan_in_use()["plan"] == "d", "plan d in /rollout")
            assert {send() for _ in range(5)} == {(200, 2)}  # off: the latest version, as without a plan
    finally:
        fake.close()


@pytest.mark.slow
def test_a_local_canary_promote_rollback_and_abort_lose_no_request(tiny_model, tmp_path, shared_photos):
    models = tmp_path / "models"
    for version in ("1", "2"):
        shutil.copytree(list_versions(tiny_model)[-1][1], models / "pizza" / version)
    env = make_env(tmp_path, models, PIZZACTL_POLL_SECONDS="0.3")
    body = {"image_b64": base64.b64encode(shared_photos["pizza"][0].read_bytes()).decode()}
    marks: list[tuple[str, int, int]] = []  # (command, answers when it returned, when the next began)

    def pizzactl(*args: str) -> None:
        if marks:  # the previous step's window ends where this command starts
            marks[-1] = (*marks[-1][:2], len(sender.seen))
        proc = run_pizzactl(*args, "--timeout", "240", env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        marks.append((args[0], len(sender.seen), -1))

    def record() -> dict:
        return json.loads((tmp_path / "state" / "deploy.json").read_text())

    sender, started = None, {"pids": {}}
    try:
        deployed = run_pizzactl("deploy", "--target", "local", "--timeout", "240", env=env, cwd=tmp_path)
        assert deployed.returncode == 0, deployed.stderr
        started = record()
        with httpx.Client(base_url=started["url"], timeout=60) as client:

            def send() -> tuple[int, int | None]:
                try:
                    reply = client.post("/predict", json=body)
                except httpx.HTTPError:  # refused, reset: what a restart does to a client
                    return 0, None
                return reply.status_code, int(reply.headers.get("x-model-version", 0))

            with Sender(send) as sender:
                sender.wait_for(10)
                for args in (
                    ("deploy", "--target", "local", "--canary", "50"),
                    ("promote",),
                    ("rollback",),
                    ("deploy", "--target", "local", "--canary", "50"),
                    ("abort",),
                ):
                    pizzactl(*args)
                    sender.wait_for(20)
        final = record()
    finally:
        run_pizzactl("teardown", env=env, cwd=tmp_path, timeout=60)
        for pid in started["pids"].values():
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
    seen = sender.seen
    assert {status for status, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
    expected = {"deploy": {1, 2}, "promote": {2}, "rollback": {1}, "abort": {1}}
    for step, at, end in marks:
        versions = {v for _, v in seen[at + 1 : end if end >= 0 else len(seen)]}  # sent after it returned
        assert versions == expected[step], (step, versions)
    assert final["pids"] == started["pids"]  # no server was restarted
    assert final["extra"]["pinned_version"] == 1 and "rollout" not in final["extra"]
    assert [e["action"] for e in final["extra"]["rollouts"]] == ["promote", "abort"]
