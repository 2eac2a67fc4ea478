"""Which Docker daemon pizzactl talks to, and what it builds for (a fake daemon: tests/support/docker_fakes.py).

Docker Desktop, Colima and OrbStack have no /var/run/docker.sock: the docker CLI reaches them
through the active context. pizzactl resolves the endpoint as the CLI does. On arm64 (Apple
Silicon) there is no tensorflow/serving image and no tensorflow-cpu wheel.
"""

from __future__ import annotations

import pytest

from pizzactl.config import load_settings
from pizzactl.errors import DeployError, UsageError
from pizzactl.kube import docker_daemon, images

from support.docker_fakes import FakeDockerd, write_docker_context


@pytest.fixture
def docker_config(tmp_path, monkeypatch):
    """An empty docker CLI config dir (DOCKER_CONFIG), no DOCKER_HOST, no DOCKER_CONTEXT."""
    config = tmp_path / "docker-config"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    return config


def test_the_active_docker_context_is_used_when_docker_host_is_unset(docker_config, tmp_path):
    with FakeDockerd(tmp_path / "colima.sock") as colima:
        write_docker_context(docker_config, "colima", colima.url)
        client = docker_daemon.docker_client()
        assert client.api.base_url.startswith("http+docker://")
        assert "/_ping" in colima.paths()  # it asked the context's daemon, not /var/run/docker.sock
    assert docker_daemon.docker_endpoint().source == "context colima"


def test_docker_context_env_beats_the_current_context_and_docker_host_beats_both(docker_config, tmp_path, monkeypatch):
    with FakeDockerd(tmp_path / "a.sock") as a, FakeDockerd(tmp_path / "b.sock") as b:
        write_docker_context(docker_config, "a", a.url)
        write_docker_context(docker_config, "b", b.url, current=False)
        monkeypatch.setenv("DOCKER_CONTEXT", "b")
        docker_daemon.docker_client()
        assert "/_ping" in b.paths() and "/_ping" not in a.paths()
        monkeypatch.setenv("DOCKER_HOST", a.url)
        assert docker_daemon.docker_endpoint().source == "DOCKER_HOST"
        docker_daemon.docker_client()
        assert "/_ping" in a.paths()


def test_an_unreachable_context_names_it_and_how_to_switch(docker_config, tmp_path):
    write_docker_context(docker_config, "desktop-linux", f"unix://{tmp_path}/gone.sock")
    with pytest.raises(DeployError) as info:
        docker_daemon.docker_client()
    assert "context desktop-linux" in info.value.message
    assert "docker context ls" in info.value.hint


def _models(tmp_path):
    version = tmp_path / "models" / "pizza" / "2"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    return tmp_path / "models"


def test_on_arm64_the_builtin_server_is_the_default_with_the_tensorflow_wheel(docker_config, tmp_path, monkeypatch):
    with FakeDockerd(tmp_path / "d.sock", architecture="aarch64") as dockerd:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        built = images.build(load_settings({"models_dir": _models(tmp_path)}, environ={}))
        builds = dockerd.builds()
    assert built.model_server == "builtin" and built.platform == "linux/arm64"
    assert "-builtin-" in built.model_image
    model_build = next(b for b in builds if "modelserver.Dockerfile" in b.get("dockerfile", ""))
    assert '"TENSORFLOW": "tensorflow==2.21.0"' in model_build["buildargs"]


def test_tfserving_on_arm64_is_refused_with_the_way_out(tmp_path):
    settings = load_settings({"models_dir": _models(tmp_path), "model_server": "tfserving"}, environ={})
    with pytest.raises(UsageError) as info:
        images.plan_images(settings, platform="linux/arm64")
    assert "no linux/arm64 build" in info.value.message and "--model-server builtin" in info.value.hint
    assert images.plan_images(settings).model_server == "tfserving"  # amd64: the default stays


def test_build_platform_is_passed_to_the_daemon_and_changes_the_tag(docker_config, tmp_path, monkeypatch):
    models = _models(tmp_path)
    with FakeDockerd(tmp_path / "d.sock") as dockerd:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        native = images.build(load_settings({"models_dir": models, "model_server": "builtin"}, environ={}))
        cross = images.build(
            load_settings({"models_dir": models, "model_server": "builtin", "platform": "linux/arm64"}, environ={})
        )
        builds = dockerd.builds()
    assert cross.model_image != native.model_image and cross.platform == "linux/arm64"
    assert [b.get("platform") for b in builds] == [None, None, "linux/arm64", "linux/arm64"]


def test_doctor_says_which_model_server_an_arm64_machine_gets(docker_config, tmp_path, monkeypatch):
    from pizzactl.doctor import doctor

    with FakeDockerd(tmp_path / "d.sock", architecture="aarch64") as dockerd:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        checks = {c.name: c for c in doctor(load_settings({"port": 0}, environ={}))}
    assert checks["docker"].ok is True
    assert "linux/arm64" in checks["architecture"].detail and "builtin model server" in checks["architecture"].detail


TLS_FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "docker-tls"


def test_docker_host_with_tls_verify_and_cert_path_reaches_a_tls_daemon(docker_config, tmp_path, monkeypatch):
    """Issue 22 item 11: DOCKER_HOST=tcp://... + DOCKER_TLS_VERIFY + DOCKER_CERT_PATH (what
    `docker-machine env` and remote daemons use) work as with the docker CLI and docker.from_env()."""
    with FakeDockerd(tmp_path / "unused.sock", tls=TLS_FIXTURES) as remote:
        monkeypatch.setenv("DOCKER_HOST", remote.url)
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        monkeypatch.setenv("DOCKER_CERT_PATH", str(TLS_FIXTURES))
        for bundle in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests would verify against these instead
            monkeypatch.delenv(bundle, raising=False)
        client = docker_daemon.docker_client(10)
        assert client.api.base_url.startswith("https://127.0.0.1:")
        assert docker_daemon.daemon_platform(client.api) == "linux/amd64"
    assert "/_ping" in remote.paths()


def test_a_missing_certificate_in_docker_cert_path_says_what_is_needed(docker_config, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    with pytest.raises(DeployError) as info:
        docker_daemon.docker_client(5)
    assert "ca.pem, cert.pem and key.pem" in info.value.hint


def test_a_kind_dry_run_plans_for_the_platform_of_the_docker_daemon(docker_config, tmp_path, monkeypatch):
    """Issue 22 item 11: the kind node is a container of the Docker daemon, so --dry-run plans for
    its platform (arm64 here: the builtin model server, the arm64 tags), not always linux/amd64."""
    from pizzactl.deploy import dry_run

    settings = load_settings({"models_dir": _models(tmp_path)}, environ={})
    with FakeDockerd(tmp_path / "d.sock", "aarch64") as arm:
        monkeypatch.setenv("DOCKER_HOST", arm.url)
        text = dry_run(settings)
    planned = images.plan_images(settings, platform="linux/arm64")
    assert f"image: {planned.model_image}" in text and planned.model_image.startswith("pizzactl-model:v2-builtin-")
    assert f"image: {planned.gateway_image}" in text


def test_without_a_daemon_a_dry_run_plans_for_this_machine(docker_config, tmp_path, monkeypatch):
    from pizzactl.deploy import dry_run

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/gone.sock")
    settings = load_settings({"models_dir": _models(tmp_path), "model_server": "builtin"}, environ={})
    planned = images.plan_images(settings, platform=docker_daemon.local_platform())
    assert f"image: {planned.model_image}" in dry_run(settings)
