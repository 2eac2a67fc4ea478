"""A fake Docker daemon on a unix socket: the Engine API endpoints pizzactl calls, and nothing more.

The docker SDK talks to it unpatched (as it would to /var/run/docker.sock): `/_ping`,
`/version` (API version negotiation), `/info` (Architecture, as `docker info` reports it:
"x86_64" or "aarch64"), `POST /build` (streams {"stream": ...} lines and the image then exists;
the query string is kept, so a test sees `platform=` and the build args), `/images/NAME/json`
(404 "No such image" for unknown images), `POST /images/NAME/push` and `/containers/NAME/json`
(404, unless the test put it in `containers`). Endpoints and shapes follow the Docker Engine API reference (docs.docker.com/reference/api/engine).
Every request is recorded in `requests` as (method, path, query).

`add_container(name, status, ports)` makes `/containers/NAME/json` answer as `docker inspect` of a
created container does: `State.Status` and `NetworkSettings.Ports`, {"8500/tcp": [{"HostIp",
"HostPort"}]}, where HostPort is the port Docker picked for a binding asked with an empty HostPort
(Engine API ContainerInspect, PortMap; `docker run -p 127.0.0.1::8500`).

With `kind_home` (tests/support/k8s_fakes.py's fake kind), the node containers the fake kind created are
containers of this daemon: `/containers/<cluster>-control-plane/json` answers with their port
bindings, as `docker inspect` of a real kind node does. `api_version` is what the daemon
negotiates (1.45: Docker 26; 1.48: Docker 28, the first to save one platform, `docker save --platform`).

With `tls=DIR`, the daemon listens on TCP 127.0.0.1 with TLS and accepts only clients with a
certificate from DIR's CA, as `dockerd --tlsverify --tlscacert --tlscert --tlskey -H tcp://...`
does (docs.docker.com/engine/security/protect-access: "Use TLS (HTTPS) to protect the Docker
daemon socket"). tests/fixtures/docker-tls holds such a set: ca.pem, cert.pem, key.pem (the client's,
named as DOCKER_CERT_PATH expects them) and server-cert.pem, server-key.pem (EC P-256, valid to 2126,
made with openssl for these tests only).
"""

from __future__ import annotations

import http.server
import json
import re
import socketserver
import threading
import urllib.parse
from pathlib import Path

API_VERSION = "1.45"


class FakeDockerd:
    def __init__(
        self,
        socket_path: Path,
        architecture: str = "x86_64",
        *,
        kind_home: Path | None = None,
        tls: Path | None = None,
    ):
        self.socket_path = Path(socket_path)
        self.architecture = architecture
        self.kind_home = kind_home
        self.api_version = API_VERSION
        self.images: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.build_error: str | None = None
        self.containers: dict[str, dict] = {}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body, content_type: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Api-Version", fake.api_version)
                self.end_headers()
                self.wfile.write(data)

            def _chunked(self, chunks: list[bytes]) -> None:
                """A streamed answer (build output, push progress): one JSON message per chunk."""
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

            def _route(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                path = re.sub(r"^/v1\.\d+", "", url.path)
                query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                elif self.headers.get("Transfer-Encoding") == "chunked":
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        self.rfile.read(size + 2)
                        if size == 0:
                            break
                fake.requests.append((method, path, query))
                self._answer(method, path, query)

            def _answer(self, method: str, path: str, query: dict) -> None:
                if path == "/_ping":
                    return self._send(200, b"OK", "text/plain")
                if path == "/version":
                    arch = "arm64" if fake.architecture == "aarch64" else "amd64"
                    return self._send(
                        200, {"Version": "27.5.1", "ApiVersion": fake.api_version, "Os": "linux", "Arch": arch}
                    )
                if path == "/info":
                    return self._send(200, {"Architecture": fake.architecture, "OSType": "linux", "NCPU": 2})
                if method == "POST" and path == "/build":
                    if fake.build_error:
                        return self._chunked([json.dumps({"error": fake.build_error}).encode() + b"\n"])
                    fake.images[query["t"]] = 123_000_000
                    lines = [{"stream": "Step 1/1 : FROM python:3.11-slim\n"}, {"stream": "Successfully built 0123\n"}]
                    return self._chunked([json.dumps(x).encode() + b"\n" for x in lines])
                image = re.match(r"^/images/(.+)/(json|push)$", path)
                if image:
                    name = urllib.parse.unquote(image.group(1))
                    if image.group(2) == "push":
                        ref = f"{name}:{query.get('tag', 'latest')}"
                        if ref not in fake.images:
                            return self._send(
                                200, (json.dumps({"error": f"tag does not exist: {ref}"}) + "\n").encode()
                            )
                        return self._send(200, (json.dumps({"status": "Pushed"}) + "\n").encode())
                    if name in fake.images:
                        return self._send(200, {"Id": "sha256:0123", "Size": fake.images[name], "RepoTags": [name]})
                    return self._send(404, {"message": f"No such image: {name}"})
                node = re.match(r"^/containers/(.+)-control-plane/json$", path)
                if node and fake.kind_home is not None and (fake.kind_home / f"{node.group(1)}.node.json").exists():
                    return self._send(200, json.loads((fake.kind_home / f"{node.group(1)}.node.json").read_text()))
                inspect = re.match(r"^/containers/([^/]+)/json$", path)
                if inspect and inspect.group(1) in fake.containers:
                    return self._send(200, fake.containers[inspect.group(1)])
                if path.startswith("/containers/"):
                    return self._send(404, {"message": f"No such container: {path.split('/')[2]}"})
                return self._send(404, {"message": "page not found"})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_HEAD(self):
                self._route("HEAD")

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def get_request(self):
                request, _ = super().get_request()
                return request, ("local", 0)

        self.tls = tls
        if tls is not None:
            import ssl

            class TLSServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
                daemon_threads = True

            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls / "ca.pem"))
            context.load_cert_chain(str(tls / "server-cert.pem"), str(tls / "server-key.pem"))
            context.verify_mode = ssl.CERT_REQUIRED  # --tlsverify: only clients the CA signed
            self.server = TLSServer(("127.0.0.1", 0), Handler)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        else:
            self.socket_path.parent.mkdir(parents=True, exist_ok=True)
            self.server = Server(str(self.socket_path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_container(self, name: str, status: str = "running", ports: dict[str, list[dict]] | None = None) -> None:
        self.containers[name] = {
            "Id": f"{abs(hash(name)):064x}"[:64],
            "Name": f"/{name}",
            "State": {"Status": status, "Running": status == "running", "ExitCode": 0},
            "Config": {"Labels": {"pizzactl": "1"}},
            "NetworkSettings": {"Ports": ports or {}},
        }

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"tcp://127.0.0.1:{self.server.server_address[1]}"
        return f"unix://{self.socket_path}"

    def __enter__(self) -> FakeDockerd:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]

    def builds(self) -> list[dict]:
        return [query for method, path, query in self.requests if method == "POST" and path == "/build"]


def write_docker_context(config_dir: Path, name: str, host: str, *, current: bool = True) -> None:
    """A docker CLI context as `docker context create NAME --docker host=HOST` stores it:
    config_dir/contexts/meta/<sha256(name)>/meta.json, and `docker context use` sets
    "currentContext" in config_dir/config.json (docs.docker.com/engine/manage-resources/contexts)."""
    import hashlib

    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}})
    )
    config = config_dir / "config.json"
    data = json.loads(config.read_text()) if config.exists() else {}
    if current:
        data["currentContext"] = name
    config.write_text(json.dumps(data))
