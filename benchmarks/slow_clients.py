"""Time to close a slow client: a server started as deployed (`python -m pizzactl.serving.<server>`,
its settings from PIZZACTL_* variables), one client trickling its headers and one trickling a
body, one byte every `--every` seconds; prints the seconds from connect to close, and the
first line of the answer each got.

    python benchmarks/slow_clients.py                      # the gateway, default settings (20 s)
    PIZZACTL_HEADER_TIMEOUT=2 PIZZACTL_BODY_TIMEOUT=2 python benchmarks/slow_clients.py
    python benchmarks/slow_clients.py --server modelserver
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["gateway", "modelserver"], default="gateway")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between two bytes")
    parser.add_argument("--give-up", type=float, default=120.0, help="seconds before the clients stop by themselves")
    args = parser.parse_args()

    port = free_port()
    if args.server == "gateway":
        where = ["--model-url", f"http://127.0.0.1:{free_port()}"]
        path = b"/predict"
    else:
        where = ["--models", tempfile.mkdtemp()]
        path = b"/v1/models/pizza:predict"
    server = subprocess.Popen(
        [sys.executable, "-m", f"pizzactl.serving.{args.server}", *where, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
        clients = {
            "headers": (head, b"X"),
            "body": (head + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n", b" "),
        }
        state = {}
        for name, (first, _) in clients.items():
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(first)
            sock.setblocking(False)
            state[name] = {"sock": sock, "started": time.monotonic(), "answer": b""}
        closed: dict[str, float] = {}
        while len(closed) < len(state) and time.monotonic() - state["headers"]["started"] < args.give_up:
            for name, s in state.items():
                if name in closed:
                    continue
                try:
                    while chunk := s["sock"].recv(4096):
                        s["answer"] += chunk
                    closed[name] = time.monotonic() - s["started"]
                except BlockingIOError:
                    try:
                        s["sock"].send(clients[name][1])
                    except OSError:
                        closed[name] = time.monotonic() - s["started"]
                except OSError:
                    closed[name] = time.monotonic() - s["started"]
            time.sleep(args.every)
        result = {
            name: {
                "closed_after_s": round(closed[name], 2) if name in closed else None,
                "answer": s["answer"].split(b"\r\n")[0].decode(errors="replace"),
            }
            for name, s in state.items()
        }
        print(json.dumps({"server": args.server, **result}))
        for s in state.values():
            s["sock"].close()  # a server without timeouts waits for them to stop
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


if __name__ == "__main__":
    main()
