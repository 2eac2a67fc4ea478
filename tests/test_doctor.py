"""`pizzactl doctor`: every failed check names its fix; required failures make it exit 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pizzactl.config import load_settings
from pizzactl.doctor import doctor

from support.cli import run_pizzactl
from support.k8s_fakes import install_fake_kind


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """No Docker daemon, no Kaggle token, and only a fake kind on PATH."""
    install_fake_kind(tmp_path / "bin", tmp_path / "kind-home")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.path.dirname(sys.executable)}")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    return tmp_path


def _by_name(checks):
    return {c.name: c for c in checks}


def test_each_failed_check_names_the_command_that_fixes_it(machine):
    checks = _by_name(doctor(load_settings({"port": 0}, environ={})))
    assert checks["docker"].ok is False and "docs.docker.com/engine/install" in checks["docker"].fix  # no docker CLI
    assert checks["kind"].ok is True and "v0.27.0" in checks["kind"].detail
    assert checks["kaggle"].ok is False and checks["kaggle"].required is False
    assert "kaggle.json" in checks["kaggle"].fix
    for c in checks.values():
        assert c.ok or c.fix, c


def test_a_busy_gateway_port_fails_with_the_way_out(machine):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        check = _by_name(doctor(load_settings({"port": port}, environ={})))[f"port {port}"]
    assert check.ok is False and check.required is True
    assert "pizzactl teardown" in check.fix and f"--port {port + 1}" in check.fix


def test_kind_is_required_only_for_the_kind_target(machine, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # no kind at all
    kind_default = _by_name(doctor(load_settings({"port": 0}, environ={})))["kind"]
    assert kind_default.ok is False and kind_default.required is True
    assert "go install sigs.k8s.io/kind" in kind_default.fix
    docker_target = _by_name(doctor(load_settings({"port": 0, "target": "docker"}, environ={})))["kind"]
    assert docker_target.required is False


def test_kaggle_token_is_found(machine):
    token = machine / "kaggle" / "kaggle.json"
    token.parent.mkdir()
    token.write_text(json.dumps({"username": "u", "key": "k"}))
    token.chmod(0o600)
    check = _by_name(doctor(load_settings({"port": 0}, environ={})))["kaggle"]
    assert check.ok is True and str(token) in check.detail


def test_cli_json_and_exit_code_when_a_required_check_fails(machine):
    proc = run_pizzactl("doctor", "--json", env={**os.environ, "PIZZACTL_PORT": "0"}, timeout=120)
    assert proc.returncode == 1  # Docker is unreachable
    checks = json.loads(proc.stdout)
    assert {"name", "ok", "detail", "fix", "required"} <= set(checks[0])
    assert [c["name"] for c in checks if c["required"] and not c["ok"]] == ["docker"]


def test_doctor_does_not_import_tensorflow(machine):
    code = (
        "import sys; from pizzactl.config import load_settings; from pizzactl.doctor import doctor; "
        "c = [x for x in doctor(load_settings({})) if x.name == 'tensorflow'][0]; "
        "print(c.ok, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["True", "False"]
