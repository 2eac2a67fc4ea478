"""Supervision on `deploy --target local`: a crashed server comes back, a crash loop is reported.

The fast tests run the supervisor (`python -m pizzactl.serving.supervise SPEC`) on small
children of their own (one that exits at once every time, one that sleeps), the way deploy runs
it on the model server and gateway; `pizzactl status` and `teardown` read the same status file.
The slow tests deploy the tiny real model and `kill -9` its servers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from support.cli import make_env, run_pizzactl
from support.processes import alive, free_port, listening, wait_until


def run_supervisor(tmp_path: Path, children: list[dict], **backoff: float) -> SimpleNamespace:
    from pizzactl.serving import supervise

    spec = tmp_path / "spec.json"
    status_file = tmp_path / "supervisor.json"
    spec.write_text(json.dumps({"children": children, "status_file": str(status_file), "backoff": backoff}))
    with open(tmp_path / "supervisor.log", "wb") as log:
        sup = subprocess.Popen(supervise.command(spec), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    threading.Thread(target=sup.wait, daemon=True).start()  # reaped when it exits, as init reaps a deployed one
    return SimpleNamespace(proc=sup, status_file=status_file, log=tmp_path / "supervisor.log")


def status_of(sup: SimpleNamespace) -> dict:
    from pizzactl.serving.supervise import read_status

    return read_status(sup.status_file) or {}


def child(sup: SimpleNamespace, name: str) -> dict:
    return (status_of(sup).get("children") or {}).get(name) or {}


def stop(sup: SimpleNamespace) -> None:
    if sup.proc.poll() is None:
        os.killpg(sup.proc.pid, signal.SIGKILL)
        sup.proc.wait(10)


EXIT_AT_ONCE = [sys.executable, "-c", "import sys; sys.exit(3)"]
SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_a_server_that_exits_at_once_is_a_crash_loop_with_doubling_backoff_in_status(tmp_path):
    from pizzactl.deploy import state as state_mod
    from pizzactl.deploy.state import DeployState

    sup = run_supervisor(
        tmp_path,
        [
            {"name": "modelserver", "cmd": EXIT_AT_ONCE, "log": str(tmp_path / "modelserver.log")},
            {"name": "gateway", "cmd": SLEEP, "log": str(tmp_path / "gateway.log")},
        ],
        initial=0.05,
        max=0.4,
        reset_after=30,
        crash_loop_after=3,
    )
    sleeper = None
    try:
        assert wait_until(lambda: child(sup, "modelserver").get("restarts", 0) >= 5, 60), sup.log.read_text()
        crashing, steady = child(sup, "modelserver"), child(sup, "gateway")
        sleeper = steady["pid"]
        waits = [exit_["backoff_s"] for exit_ in crashing["history"]]
        assert waits[:6] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4][: len(waits[:6])] and len(waits) >= 5
        assert all(exit_["code"] == 3 and exit_["restarted"] for exit_ in crashing["history"])
        assert crashing["crash_loop"] is True and crashing["quick_exits"] >= 3
        assert steady["state"] == "running" and steady["restarts"] == 0 and alive(sleeper)
        assert "exit code 3" in (tmp_path / "modelserver.log").read_text()  # logged where the user looks
        assert "crash loop" in sup.log.read_text()

        env = make_env(tmp_path, tmp_path / "models")
        from pizzactl.config import load_settings

        settings = load_settings({}, environ={"PIZZACTL_STATE_DIR": env["PIZZACTL_STATE_DIR"]}, cwd=tmp_path)
        state_mod.save(
            settings,
            DeployState(
                target="local",
                url=f"http://127.0.0.1:{free_port()}",
                pids={"supervisor": sup.proc.pid},
                logs={"modelserver": str(tmp_path / "modelserver.log")},
                extra={"supervisor_status": str(sup.status_file)},
            ),
        )
        st = json.loads(run_pizzactl("status", "--json", env=env, cwd=tmp_path).stdout)
        assert st["ready"] is False and st["supervisor"] == "alive"
        assert st["restarts"]["modelserver"] >= 5 and st["restarts"]["gateway"] == 0
        assert "exit code 3" in st["last_exit"]["modelserver"]
        assert list(st["crash_loop"]) == ["modelserver"]
        assert st["supervision"]["children"]["modelserver"]["crash_loop"] is True
        table = run_pizzactl("status", env=env, cwd=tmp_path).stdout
        assert "crash loop" in table and "modelserver" in table

        down = run_pizzactl("teardown", "--json", env=env, cwd=tmp_path, timeout=60)
        assert down.returncode == 0, down.stderr
        assert sup.proc.wait(20) == 0  # the supervisor stopped its children and then itself
        assert wait_until(lambda: not alive(sleeper), 10)
        assert status_of(sup)["supervisor"]["state"] == "stopped"
    finally:
        stop(sup)
        if sleeper and alive(sleeper):
            os.killpg(sleeper, signal.SIGKILL)


def test_a_deliberate_stop_is_not_restarted_and_sigterm_stops_the_supervisor_and_its_children(tmp_path):
    sup = run_supervisor(
        tmp_path,
        [
            {"name": "modelserver", "cmd": SLEEP, "log": None},
            {"name": "gateway", "cmd": SLEEP, "log": None},
            {"name": "done", "cmd": [sys.executable, "-c", "pass"], "log": None},
        ],
        initial=0.05,
    )
    pids: list[int] = []
    try:
        assert wait_until(lambda: child(sup, "gateway").get("pid") and child(sup, "modelserver").get("pid"), 30)
        pids = [child(sup, "modelserver")["pid"], child(sup, "gateway")["pid"]]
        os.kill(pids[1], signal.SIGTERM)  # `kill PID`: someone wants it stopped
        assert wait_until(lambda: child(sup, "gateway").get("state") == "stopped", 20)
        assert wait_until(lambda: child(sup, "done").get("state") == "stopped", 20)  # exit code 0
        time.sleep(0.5)  # ten backoff periods: a restart would have happened by now
        gateway, done = child(sup, "gateway"), child(sup, "done")
        assert gateway["restarts"] == 0 and gateway["pid"] is None
        assert gateway["last_exit"]["signal"] == "SIGTERM" and gateway["last_exit"]["restarted"] is False
        assert done["restarts"] == 0 and done["last_exit"]["code"] == 0
        assert alive(pids[0]) and sup.proc.poll() is None

        sup.proc.send_signal(signal.SIGTERM)  # what teardown sends
        assert sup.proc.wait(20) == 0
        assert not any(alive(pid) for pid in pids)
        final = status_of(sup)
        assert final["supervisor"]["state"] == "stopped"
        assert final["children"]["modelserver"]["restarts"] == 0  # stopped, not restarted
    finally:
        stop(sup)
        for pid in pids:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


# --- the real servers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def supervised(tiny_model, tiny_classifier, tmp_path_factory):
    """`pizzactl deploy --target local` of the tiny model, torn down at the end no matter what."""
    root = tmp_path_factory.mktemp("supervised")
    env = make_env(root, tiny_model)
    started = time.monotonic()
    proc = run_pizzactl("deploy", "--target", "local", "--json", "--timeout", "240", env=env, cwd=root)
    ns = SimpleNamespace(
        env=env,
        root=root,
        proc=proc,
        deploy_seconds=time.monotonic() - started,
        url=f"http://127.0.0.1:{env['PIZZACTL_PORT']}",
        photo=tiny_classifier.photos[-1].read_bytes(),
        seen_pids=set(),
    )
    try:
        yield ns
    finally:
        run_pizzactl("teardown", env=env, cwd=root, timeout=60)
        for pid in ns.seen_pids:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


def local_status(ns) -> dict:
    proc = run_pizzactl("status", "--json", env=ns.env, cwd=ns.root)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    ns.seen_pids.update(st.get("pids", {}).values())
    return st


def predicts(ns) -> bool:
    try:
        answer = httpx.post(
            ns.url + "/predict", content=ns.photo, headers={"content-type": "image/jpeg"}, timeout=5, trust_env=False
        )
    except httpx.HTTPError:
        return False
    return answer.status_code == 200


def seconds_to_200_after_kill_9(ns, name: str) -> float:
    before = local_status(ns)
    assert predicts(ns) and before["processes"][name] is True
    os.kill(before["pids"][name], signal.SIGKILL)
    killed = time.monotonic()
    assert wait_until(lambda: not predicts(ns), 5)  # it really went down
    bound = max(10.0, 2 * ns.deploy_seconds)  # 10 s; on a machine so busy that a fresh start is slower, 2 fresh starts
    assert wait_until(lambda: predicts(ns), bound), (ns.root / "state" / "local" / "supervisor.log").read_text()
    return time.monotonic() - killed


@pytest.mark.slow
def test_kill_9_of_the_model_server_is_restarted_and_the_gateway_answers_200_again(supervised):
    assert supervised.proc.returncode == 0, supervised.proc.stderr
    old = local_status(supervised)["pids"]["modelserver"]
    seconds_to_200_after_kill_9(supervised, "modelserver")
    st = local_status(supervised)
    assert st["ready"] is True and st["processes"]["modelserver"] is True
    assert st["pids"]["modelserver"] != old
    assert st["restarts"] == {"modelserver": 1, "gateway": 0}
    assert "signal SIGKILL" in st["last_exit"]["modelserver"] and "crash_loop" not in st
    assert "SIGKILL" in Path(st["logs"]["modelserver"]).read_text()


@pytest.mark.slow
def test_kill_9_of_the_gateway_is_restarted_and_answers_200_again(supervised):
    old = local_status(supervised)["pids"]["gateway"]
    seconds_to_200_after_kill_9(supervised, "gateway")
    st = local_status(supervised)
    assert st["processes"]["gateway"] is True and st["pids"]["gateway"] != old
    assert st["restarts"]["gateway"] == 1
    assert "signal SIGKILL" in st["last_exit"]["gateway"]


@pytest.mark.slow
def test_a_killed_supervisor_is_reported_and_teardown_still_stops_every_server_it_ever_started(supervised):
    st = local_status(supervised)
    assert set(st["pids"]) == {"supervisor", "modelserver", "gateway"}
    for exits in st["supervision"]["children"].values():
        supervised.seen_pids.update(e["pid"] for e in exits["history"])
    os.kill(st["pids"]["supervisor"], signal.SIGKILL)
    assert wait_until(lambda: not alive(st["pids"]["supervisor"]), 10)
    after = local_status(supervised)
    assert after["supervisor"].startswith("gone") and after["processes"]["supervisor"] is False
    assert predicts(supervised)  # the servers keep serving; nothing would restart them now
    down = run_pizzactl("teardown", env=supervised.env, cwd=supervised.root, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "stopped 2 processes" in down.stdout
    assert wait_until(lambda: not any(alive(pid) for pid in supervised.seen_pids), 10)
    assert not listening(int(supervised.env["PIZZACTL_PORT"]))
    assert not listening(int(supervised.env["PIZZACTL_MODEL_PORT"]))
    assert len(supervised.seen_pids) >= 5  # supervisor, both first servers, both restarted ones
