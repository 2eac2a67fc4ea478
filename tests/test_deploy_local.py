"""`pizzactl deploy --target local`, status, predict, teardown and serve, through the real CLI.

One deployment of the tiny real model (model server + gateway as background processes) is
shared by the tests in file order: deploy, status, predict (file, URL, directory, --csv,
--json, --explain), deploy again, teardown. Deploy and teardown run in processes of their own
(the servers must outlive the deploy command); status and predict run in this one (`invoke`,
with the deployment's settings): a process start saved each, TensorFlow's for --explain.
Afterwards no process and no listening port may be left. Liveness is checked with
os.kill(pid, 0) (reaping nothing: the CLI, not the test, is the parent) and ports by connecting.
"""

from __future__ import annotations

import csv
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from pizzactl.errors import EXIT_FAILURE, EXIT_USER

from support.cli import PIZZACTL, invoke, make_env, overrides, run_pizzactl
from support.processes import alive, children_of, free_port, listening, wait_until


@pytest.fixture(scope="module")
def photo_server(tiny_classifier, tmp_path_factory):
    """A plain http.server on loopback serving two real photos (the gateway needs --allow-private-urls)."""
    root = tmp_path_factory.mktemp("photo_site")
    for path in tiny_classifier.photos[:1] + tiny_classifier.photos[-1:]:
        shutil.copy(path, root / path.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(
        url=f"http://127.0.0.1:{server.server_address[1]}", names=sorted(p.name for p in root.iterdir())
    )
    server.shutdown()


@pytest.fixture(scope="module")
def deployed(tiny_model, tmp_path_factory):
    """`pizzactl deploy --target local --allow-private-urls` of the tiny model; torn down at the end no matter what."""
    root = tmp_path_factory.mktemp("deploy_local")
    env = make_env(root, tiny_model)
    proc = run_pizzactl(
        "deploy", "--target", "local", "--allow-private-urls", "--json", "--timeout", "240", env=env, cwd=root
    )
    ns = SimpleNamespace(
        env=env, root=root, proc=proc, state_file=root / "state" / "deploy.json", seen_pids=set(), seen_ports=set()
    )
    try:
        yield ns
    finally:
        run_pizzactl("teardown", env=env, cwd=root, timeout=60)
        for pid in ns.seen_pids:  # last resort: never leave a server behind
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


def read_state(ns) -> dict:
    state = json.loads(ns.state_file.read_text())
    ns.seen_pids.update(state["pids"].values())
    ns.seen_ports.update(state["ports"].values())
    return state


@pytest.mark.slow
def test_deploy_local_starts_both_servers_records_state_and_prints_the_url(deployed):
    assert deployed.proc.returncode == 0, deployed.proc.stderr
    result = json.loads(deployed.proc.stdout)
    state = read_state(deployed)
    port = int(deployed.env["PIZZACTL_PORT"])
    assert result["target"] == "local"
    assert result["url"] == f"http://127.0.0.1:{port}" == state["url"]
    assert result["model_version"] == 1 == state["model_version"]
    assert set(state["pids"]) == {"supervisor", "modelserver", "gateway"}
    assert all(alive(pid) for pid in state["pids"].values())
    assert state["ports"]["gateway"] == port
    assert all(Path(p).is_file() for p in state["logs"].values())
    assert httpx.get(state["url"] + "/readyz", timeout=5).status_code == 200


@pytest.mark.slow
def test_deployed_processes_outlive_the_deploy_command_in_their_own_session(deployed):
    state = read_state(deployed)
    for pid in state["pids"].values():
        assert os.getsid(pid) == pid  # detached: Ctrl-C in the deploying shell does not reach them


@pytest.mark.slow
def test_status_reports_target_url_version_ready_and_live_pids(deployed):
    proc = invoke("status", "--json", env=overrides(deployed.env), cwd=deployed.root)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["deployed"] is True and st["target"] == "local" and st["ready"] is True
    assert st["url"] == read_state(deployed)["url"]
    assert st["model_version"] == 1
    assert st["processes"] == {"supervisor": True, "modelserver": True, "gateway": True}
    assert st["restarts"] == {"modelserver": 0, "gateway": 0} and "crash_loop" not in st
    table = invoke("status", env=overrides(deployed.env), cwd=deployed.root)
    assert table.returncode == 0 and "local" in table.stdout and "yes" in table.stdout


@pytest.mark.slow
def test_predict_a_file_uses_the_deployed_endpoint(deployed, tiny_classifier):
    proc = invoke("predict", str(tiny_classifier.photos[-1]), env=overrides(deployed.env), cwd=deployed.root)
    assert proc.returncode == 0, proc.stderr
    assert "pizza" in proc.stdout  # pizza or not_pizza in the table
    assert str(tiny_classifier.photos[-1]) in proc.stdout


@pytest.mark.slow
def test_predict_json_gives_one_object_per_source_with_label_probability_and_version(deployed, tiny_classifier):
    files = [str(p) for p in tiny_classifier.photos[:2]]
    proc = invoke("predict", "--json", *files, env=overrides(deployed.env), cwd=deployed.root)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["source"] for r in results] == files
    for r in results:
        assert set(r) == {"schema", "source", "label", "probability", "model_version", "probabilities"}
        assert r["probabilities"]["pizza"] == r["probability"]  # binary: probability is P(pizza)
        assert r["label"] in ("pizza", "not_pizza")
        assert 0.0 <= r["probability"] <= 1.0
        assert str(r["model_version"]) == "1"
        assert r["label"] == ("pizza" if r["probability"] >= 0.5 else "not_pizza")


@pytest.mark.slow
def test_predict_url_is_fetched_by_the_gateway(deployed, photo_server):
    urls = [f"{photo_server.url}/{name}" for name in photo_server.names]
    proc = invoke("predict", "--json", *urls, env=overrides(deployed.env), cwd=deployed.root)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["source"] for r in results] == urls
    assert all(r["label"] in ("pizza", "not_pizza") for r in results)


@pytest.mark.slow
def test_predict_same_photo_as_file_and_as_url_agree(deployed, photo_server, tiny_classifier):
    name = photo_server.names[0]
    local = next(p for p in tiny_classifier.photos if p.name == name)
    proc = invoke(
        "predict", "--json", str(local), f"{photo_server.url}/{name}", env=overrides(deployed.env), cwd=deployed.root
    )
    assert proc.returncode == 0, proc.stderr
    by_file, by_url = json.loads(proc.stdout)
    assert by_file["probability"] == pytest.approx(by_url["probability"], abs=1e-6)


@pytest.mark.slow
def test_predict_directory_recurses_writes_csv_and_exits_1_when_one_image_fails(deployed, tiny_classifier, tmp_path):
    photos = tiny_classifier.photos[:3] + tiny_classifier.photos[-3:]
    (tmp_path / "album" / "nested").mkdir(parents=True)
    for i, p in enumerate(photos):
        shutil.copy(p, tmp_path / "album" / ("nested" if i % 2 else "") / p.name)
    (tmp_path / "album" / "notes.txt").write_text("not an image, skipped by its name")
    (tmp_path / "album" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    out_csv = tmp_path / "results.csv"
    proc = invoke(
        "predict",
        str(tmp_path / "album"),
        "--csv",
        str(out_csv),
        "--json",
        "--concurrency",
        "3",
        env=overrides(deployed.env),
        cwd=deployed.root,
    )
    assert proc.returncode == EXIT_FAILURE, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == 7  # 6 photos + the broken one, not notes.txt
    broken = [r for r in results if r["source"].endswith("broken.jpg")]
    assert len(broken) == 1 and "error" in broken[0] and "label" not in broken[0]
    assert sum("label" in r for r in results) == 6
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["source"] for r in rows] == [r["source"] for r in results]
    assert {r["label"] for r in rows if not r["error"]} <= {"pizza", "not_pizza"}
    assert rows[[r["source"] for r in rows].index(broken[0]["source"])]["error"]


@pytest.mark.slow
def test_predict_table_has_a_summary_for_several_images(deployed, tiny_classifier):
    proc = invoke("predict", *map(str, tiny_classifier.photos[:3]), env=overrides(deployed.env), cwd=deployed.root)
    assert proc.returncode == 0, proc.stderr
    assert "3 images:" in proc.stdout


@pytest.mark.slow
def test_predict_explain_writes_a_gradcam_png_per_image(deployed, tiny_classifier, tmp_path):
    from PIL import Image

    photos = [str(p) for p in (tiny_classifier.photos[0], tiny_classifier.photos[-1])]
    proc = invoke(
        "predict",
        "--json",
        "--explain",
        str(tmp_path / "cams"),
        *photos,
        env=overrides(deployed.env),
        cwd=deployed.root,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for r in results:
        png = Path(r["explanation"])
        assert png.parent == tmp_path / "cams" and png.suffix == ".png"
        with Image.open(png) as img:
            assert img.format == "PNG" and max(img.size) <= 512


@pytest.mark.slow
def test_deploy_again_replaces_the_running_deployment(deployed):
    before = read_state(deployed)
    proc = run_pizzactl(
        "deploy",
        "--target",
        "local",
        "--allow-private-urls",
        "--json",
        "--timeout",
        "240",
        env=deployed.env,
        cwd=deployed.root,
    )
    assert proc.returncode == 0, proc.stderr
    after = read_state(deployed)
    assert not any(alive(pid) for pid in before["pids"].values())
    assert all(alive(pid) for pid in after["pids"].values())
    assert set(after["pids"].values()).isdisjoint(before["pids"].values())
    assert after["url"] == before["url"]
    assert httpx.get(after["url"] + "/readyz", timeout=5).status_code == 200


@pytest.mark.slow
def test_teardown_stops_everything_and_a_second_teardown_is_a_noop(deployed):
    state = read_state(deployed)
    proc = run_pizzactl("teardown", env=deployed.env, cwd=deployed.root, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Tore down" in proc.stdout
    assert wait_until(lambda: not any(alive(pid) for pid in deployed.seen_pids), 10)
    assert not any(listening(port) for port in deployed.seen_ports)
    assert not deployed.state_file.exists()
    again = run_pizzactl("teardown", "--json", env=deployed.env, cwd=deployed.root)
    assert again.returncode == 0
    assert json.loads(again.stdout)["torn_down"] is False
    status = run_pizzactl("status", "--json", env=deployed.env, cwd=deployed.root)
    assert status.returncode == 0 and json.loads(status.stdout)["deployed"] is False
    assert state["pids"]  # the test saw real processes


# --- errors before anything starts ------------------------------------------------------------


@pytest.mark.slow
def test_deploy_on_a_busy_port_exits_3_with_the_fix(tiny_model, tmp_path):
    env = make_env(tmp_path, tiny_model)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_pizzactl("deploy", "--target", "local", "--port", str(port), env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_USER
    stderr = " ".join(proc.stderr.split())  # rich wraps long lines
    assert f"Port {port}" in stderr
    assert "--port N" in stderr and "pizzactl teardown" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "state" / "deploy.json").exists()


@pytest.mark.slow
def test_deploy_local_with_model_protocol_grpc_serves_through_the_grpc_port(tiny_model, tiny_classifier, tmp_path):
    """PIZZACTL_MODEL_PROTOCOL=grpc: the model server gets a gRPC port and the gateway calls it there."""
    env = make_env(tmp_path, tiny_model, PIZZACTL_MODEL_PROTOCOL="grpc")
    proc = run_pizzactl("deploy", "--target", "local", "--json", "--timeout", "240", env=env, cwd=tmp_path)
    state_file = tmp_path / "state" / "deploy.json"
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        state = json.loads(state_file.read_text())
        grpc_port = state["ports"]["grpc"]
        assert listening(grpc_port)
        photo = tiny_classifier.photos[-1].read_bytes()
        answer = httpx.post(state["url"] + "/predict", content=photo, headers={"content-type": "image/jpeg"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == 1
        gateway_log = Path(state["logs"]["gateway"]).read_text()
        assert f"127.0.0.1:{grpc_port} (gRPC)" in gateway_log
    finally:
        run_pizzactl("teardown", env=env, cwd=tmp_path, timeout=60)


# --- pizzactl serve ---------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_runs_both_servers_in_the_foreground_and_ctrl_c_stops_them(tiny_model, tiny_classifier, tmp_path):
    env = make_env(tmp_path, tiny_model)
    port, model_port = int(env["PIZZACTL_PORT"]), int(env["PIZZACTL_MODEL_PORT"])
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 - the serve process writes it
    serve = subprocess.Popen(
        [*PIZZACTL, "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    children: list[int] = []
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(ready, 240), (tmp_path / "serve.log").read_text()
        children = children_of(serve.pid)
        assert len(children) == 2
        predicted = run_pizzactl(
            "predict", "--endpoint", url, "--json", str(tiny_classifier.photos[0]), env=env, cwd=tmp_path
        )
        assert predicted.returncode == 0, predicted.stderr
        serve.send_signal(signal.SIGINT)
        assert serve.wait(30) == 0
        logs = (tmp_path / "serve.log").read_text()
        assert "[gateway]" in logs and "[model]" in logs  # both logs, interleaved on stderr
        assert not any(alive(pid) for pid in children)
        assert not listening(port) and not listening(model_port)
    finally:
        if serve.poll() is None:
            serve.kill()
        for pid in children:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
def test_serve_killed_outright_leaves_no_orphan_servers(tiny_model, tmp_path):
    env = make_env(tmp_path, tiny_model)
    port = int(env["PIZZACTL_PORT"])
    serve = subprocess.Popen(
        [*PIZZACTL, "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[int] = []
    try:
        assert wait_until(lambda: len(children_of(serve.pid)) == 2, 60)
        children = children_of(serve.pid)
        assert wait_until(lambda: listening(port), 240)
        serve.kill()  # SIGKILL: no chance to clean up; the children must still go
        serve.wait(10)
        assert wait_until(lambda: not any(alive(pid) for pid in children), 20)
        assert not listening(port)
    finally:
        if serve.poll() is None:
            serve.kill()
        for pid in children:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


# --- state, status and teardown without servers (fast) ----------------------------------------


def settings_in(tmp_path, **flags):
    from pizzactl.config import load_settings

    env = {"PIZZACTL_STATE_DIR": str(tmp_path / "state"), "PIZZACTL_MODELS_DIR": str(tmp_path / "models")}
    return load_settings(flags, environ=env, cwd=tmp_path)


def test_state_round_trips_and_is_replaced_atomically(tmp_path):
    from pizzactl.deploy import state as state_mod
    from pizzactl.deploy.state import DeployState

    settings = settings_in(tmp_path)
    assert state_mod.load(settings) is None
    first = DeployState(
        target="local", url="http://127.0.0.1:1", model_version=2, pids={"gateway": 11}, extra={"k": "v"}
    )
    state_mod.save(settings, first)
    state_mod.save(settings, DeployState(target="docker", url="http://127.0.0.1:2"))
    loaded = state_mod.load(settings)
    assert loaded.target == "docker" and loaded.url == "http://127.0.0.1:2"
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["deploy.json"]  # no temp files left
    state_mod.save(settings, first)
    assert state_mod.load(settings) == first
    assert state_mod.clear(settings) and not state_mod.clear(settings)


def test_a_damaged_state_file_is_a_user_error_naming_the_file(tmp_path):
    from pizzactl.deploy import state as state_mod
    from pizzactl.errors import DeployError

    settings = settings_in(tmp_path)
    state_mod.state_path(settings).parent.mkdir(parents=True)
    state_mod.state_path(settings).write_text("{not json")
    with pytest.raises(DeployError) as info:
        state_mod.load(settings)
    assert str(state_mod.state_path(settings)) in info.value.hint


def test_status_and_teardown_with_nothing_deployed_say_so_and_exit_0(tmp_path):
    env = make_env(tmp_path, tmp_path / "models")
    status = run_pizzactl("status", env=env, cwd=tmp_path)
    assert status.returncode == 0 and "Nothing deployed" in status.stdout
    teardown = run_pizzactl("teardown", env=env, cwd=tmp_path)
    assert teardown.returncode == 0 and "Nothing deployed" in teardown.stdout


def test_a_local_deployment_whose_processes_died_shows_not_ready_and_tears_down_cleanly(tmp_path):
    from pizzactl.deploy import state as state_mod
    from pizzactl.deploy import status, teardown
    from pizzactl.deploy.state import DeployState

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    settings = settings_in(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    state_mod.save(
        settings,
        DeployState(target="local", url=url, model_version=1, pids={"modelserver": dead.pid, "gateway": dead.pid}),
    )
    st = status(settings)
    assert st["deployed"] is True and st["ready"] is False
    assert st["processes"] == {"modelserver": False, "gateway": False}
    result = teardown(settings)
    assert result["torn_down"] is True and "already gone" in result["message"]
    assert state_mod.load(settings) is None


def test_a_recorded_pid_now_used_by_another_program_is_not_killed(tmp_path):
    from pizzactl.deploy import state as state_mod
    from pizzactl.deploy import teardown
    from pizzactl.deploy.state import DeployState

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        settings = settings_in(tmp_path)
        state_mod.save(settings, DeployState(target="local", url="http://127.0.0.1:1", pids={"gateway": bystander.pid}))
        teardown(settings)
        assert bystander.poll() is None  # not a pizzactl server: left alone
    finally:
        bystander.kill()
        bystander.wait()


def test_deploy_without_a_model_exits_3_and_suggests_training(tmp_path):
    env = make_env(tmp_path, tmp_path / "no-models")
    proc = run_pizzactl("deploy", "--target", "local", env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_USER
    assert "pizzactl train" in proc.stderr and "Traceback" not in proc.stderr
