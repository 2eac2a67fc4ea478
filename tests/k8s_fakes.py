"""Faithful fakes for the deploy tests: a Kubernetes API server (kmock) and a `kind` executable.

`ApplyingEmulator` is kmock's stateful Kubernetes emulator plus the one API-server behaviour
pizzactl relies on that kmock lacks: server-side apply (PATCH application/apply-patch+yaml)
creates the object when it does not exist yet. `FAKE_KIND` is a Python script that the tests
put on PATH as `kind`: it records each call (and the cluster config it was given), keeps its
clusters in a file, and on `create cluster` writes a kubeconfig context kind-NAME, as kind does.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import kmock
import yaml

APPLY = "application/apply-patch+yaml"
NAMESPACE_URL = re.compile(r"^/api/v1/namespaces/[^/]+$")
PODS = kmock.resource("v1/pods")
EVENTS = kmock.resource("v1/events")
DEPLOYMENTS = kmock.resource("apps/v1/deployments")
NAMESPACES = kmock.resource("v1/namespaces")
HPAS = kmock.resource("autoscaling/v2/horizontalpodautoscalers")


class ApplyingEmulator(kmock.KubernetesEmulator):
    """kmock's in-memory Kubernetes API, with server-side apply's create-or-update.

    kmock parses /api/v1/namespaces/NAME as "namespace NAME" rather than the Namespace object,
    so the Namespace object's own endpoints are served here, stored under (NAMESPACES, None, NAME).
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback["patch", NAMESPACE_URL] << self._apply_namespace
        self.fallback["get", NAMESPACE_URL] << self._get_namespace
        self.fallback["delete", NAMESPACE_URL] << self._delete_namespace

    def _namespace_key(self, request):
        return (NAMESPACES, None, request.url.path.rsplit("/", 1)[1])

    async def _apply_namespace(self, request):
        key = self._namespace_key(request)
        if key not in self.objects:
            self.objects[key] = request.data
        elif self.objects[key].deleted:
            self.objects[key].create(request.data)
        else:
            self.objects[key].patch(request.data)
        return self.objects[key].raw

    async def _get_namespace(self, request):
        key = self._namespace_key(request)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return self.objects[key].raw

    async def _delete_namespace(self, request):
        key = self._namespace_key(request)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        raw = self.objects[key].raw
        self.objects[key].delete()
        return {**raw, "status": {"phase": "Terminating"}}

    async def _handle(self, request):
        content_type = request.headers.get("Content-Type", "")
        if (
            request.method == kmock.method.PATCH
            and content_type.startswith(APPLY)
            and request.resource is not None
            and request.name
        ):
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects:
                self.objects[key] = request.data
            elif self.objects[key].deleted:
                self.objects[key].create(request.data)
        return await super()._handle(request)


def write_kubeconfig(path: Path, server: str, context: str) -> Path:
    name = context
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {"token": "test-token"}}],
        "contexts": [{"name": context, "context": {"cluster": name, "user": name}}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def mark_rolled_out(emulator, namespace: str = "pizzactl") -> list[str]:
    """Play the HPA and Deployment controllers: replicas = the HPA's minReplicas, all available."""
    minimum = {}
    for (resource, ns, _name), obj in list(emulator.objects.items()):
        if resource == HPAS and ns == namespace and not obj.deleted:
            minimum[obj["spec"]["scaleTargetRef"]["name"]] = obj["spec"].get("minReplicas", 1)
    done = []
    for (resource, ns, name), obj in list(emulator.objects.items()):
        if resource == DEPLOYMENTS and ns == namespace and not obj.deleted:
            n = max((obj.get("spec") or {}).get("replicas") or 1, minimum.get(name, 1))  # HPA: never below min
            obj.patch(
                {
                    "metadata": {"generation": 1},
                    "spec": {"replicas": n},
                    "status": {
                        "observedGeneration": 1,
                        "replicas": n,
                        "updatedReplicas": n,
                        "readyReplicas": n,
                        "availableReplicas": n,
                    },
                }
            )
            done.append(name)
    return done


FAKE_KIND = r'''#!{python}
"""A fake `kind` for tests: records calls, keeps clusters in a file, writes kubeconfigs."""
import json, os, sys
from pathlib import Path

home = Path(os.environ["FAKE_KIND_HOME"])
home.mkdir(parents=True, exist_ok=True)
args = sys.argv[1:]
call = {{"args": args}}
if "--config" in args:
    call["config"] = Path(args[args.index("--config") + 1]).read_text()
with open(home / "calls.jsonl", "a") as fh:
    fh.write(json.dumps(call) + "\n")
clusters_file = home / "clusters"
clusters = clusters_file.read_text().split() if clusters_file.exists() else []
fail = os.environ.get("FAKE_KIND_FAIL", "")
if fail and " ".join(args).startswith(fail):
    sys.stderr.write("ERROR: failed to create cluster: node(s) already exist for a cluster with the name\n")
    sys.exit(1)

def name():
    return args[args.index("--name") + 1] if "--name" in args else "kind"

if args[:1] == ["version"]:
    print("kind v0.27.0 go1.23.6 linux/amd64")
elif args[:2] == ["get", "clusters"]:
    print("\n".join(clusters) if clusters else "No kind clusters found.", file=sys.stdout if clusters else sys.stderr)
elif args[:2] == ["create", "cluster"]:
    clusters_file.write_text("\n".join(clusters + [name()]))
    server = os.environ.get("FAKE_KIND_SERVER")
    if server:
        import yaml
        kubeconfig = Path(os.environ["KUBECONFIG"])
        ctx = "kind-" + name()
        kubeconfig.write_text(yaml.safe_dump({{"apiVersion": "v1", "kind": "Config",
            "clusters": [{{"name": ctx, "cluster": {{"server": server}}}}],
            "users": [{{"name": ctx, "user": {{"token": "kind"}}}}],
            "contexts": [{{"name": ctx, "context": {{"cluster": ctx, "user": ctx}}}}],
            "current-context": ctx}}))
    print("Creating cluster", name(), file=sys.stderr)
elif args[:2] == ["delete", "cluster"]:
    clusters_file.write_text("\n".join(c for c in clusters if c != name()))
elif args[:2] == ["load", "docker-image"]:
    print("Image loaded", file=sys.stderr)
else:
    sys.stderr.write("unknown command\n")
    sys.exit(2)
'''


def install_fake_kind(bin_dir: Path, home: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    kind = bin_dir / "kind"
    kind.write_text(FAKE_KIND.format(python=sys.executable))
    kind.chmod(0o755)
    os.environ["FAKE_KIND_HOME"] = str(home)  # the caller's monkeypatch restores the environment
    return kind


def kind_calls(home: Path) -> list[dict]:
    path = home / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
