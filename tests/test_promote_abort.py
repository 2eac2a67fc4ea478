"""`pizzactl promote`, `abort` and `rollback` on the local target (issue 23): real servers, the
tiny real model, the shared photos. What serves is read from each answer's X-Model-Version."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from pizzactl.errors import EXIT_USER
from pizzactl.model.store import list_versions

from support.cli import make_env, run_pizzactl
from support.processes import alive


def _served(url: str, photo: Path, n: int = 8) -> set[int]:
    body = {"image_b64": base64.b64encode(photo.read_bytes()).decode()}
    versions = set()
    for _ in range(n):
        reply = httpx.post(url + "/predict", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        versions.add(int(reply.headers["x-model-version"]))
    return versions


def _record(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "state" / "deploy.json").read_text())


@pytest.mark.slow
def test_abort_then_promote_then_rollback_change_what_serves_and_the_record(tiny_model, tmp_path, shared_photos):
    models = tmp_path / "models"
    source = list_versions(tiny_model)[-1][1]
    for version in ("1", "2"):
        shutil.copytree(source, models / "pizza" / version)
    env = make_env(tmp_path, models)
    photo = shared_photos["pizza"][0]
    seen: set[int] = set()

    def pizzactl(*args: str):
        proc = run_pizzactl(*args, env=env, cwd=tmp_path)
        if (tmp_path / "state" / "deploy.json").exists():
            seen.update(_record(tmp_path)["pids"].values())
        return proc

    try:
        nothing = pizzactl("abort")
        assert nothing.returncode == EXIT_USER and "Nothing is deployed" in nothing.stderr

        assert pizzactl("deploy", "--target", "local", "--canary", "50", "--timeout", "240").returncode == 0
        url = _record(tmp_path)["url"]
        assert _served(url, photo) == {1, 2}
        status = json.loads(pizzactl("status", "--json").stdout)  # the live comparison, too little to decide yet
        assert status["live"]["mode"] == "canary" and status["live"]["candidate"]["version"] == 2
        assert status["auto"]["action"] == "wait"
        assert "live comparison (canary 50%)" in pizzactl("status").stdout

        aborted = pizzactl("abort", "--json", "--timeout", "240")
        assert aborted.returncode == 0, aborted.stderr
        outcome = json.loads(aborted.stdout)
        assert (outcome["action"], outcome["decided_by"], outcome["model_version"]) == ("abort", "person", 1)
        assert _served(url, photo) == {1}
        record = _record(tmp_path)
        assert "rollout" not in record["extra"] and record["extra"]["pinned_version"] == 1
        [entry] = record["extra"]["rollouts"]
        assert {k: entry[k] for k in ("action", "stable", "candidate", "mode", "decided_by")} == {
            "action": "abort",
            "stable": 1,
            "candidate": 2,
            "mode": "canary",
            "decided_by": "person",
        }
        assert entry["evidence"]["reasons"] == ["abort by a person"] and entry["criteria"] is None
        assert json.loads(pizzactl("status", "--json").stdout)["last_decision"].startswith("abort v2 (person, ")
        again = pizzactl("abort")
        assert again.returncode == EXIT_USER and "No canary or shadow is in flight" in again.stderr

        retry = pizzactl("deploy", "--target", "local", "--canary", "50", "--timeout", "240")
        assert retry.returncode == 0, retry.stderr
        assert "Version 2 was aborted" in retry.stderr  # said, and done: the user asked
        assert _served(url, photo) == {1, 2}
        promoted = pizzactl("promote", "--timeout", "240")
        assert promoted.returncode == 0, promoted.stderr
        assert "Promoted (person): version 2 serves every request" in promoted.stdout
        assert _served(url, photo) == {2}
        record = _record(tmp_path)
        assert [e["action"] for e in record["extra"]["rollouts"]] == ["abort", "promote"]
        assert record["model_version"] == 2 and record["extra"]["pinned_version"] == 2

        back = pizzactl("rollback", "--json", "--timeout", "240")
        assert back.returncode == 0, back.stderr
        assert (json.loads(back.stdout)["rolled_back_from"], json.loads(back.stdout)["model_version"]) == (2, 1)
        assert _served(url, photo) == {1}
        assert len(_record(tmp_path)["extra"]["rollouts"]) == 2  # the history outlives a rollback
        oldest = pizzactl("rollback")
        assert oldest.returncode == 0 and "none to roll back to" in oldest.stdout
    finally:
        run_pizzactl("teardown", env=env, cwd=tmp_path, timeout=60)
        for pid in seen:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
