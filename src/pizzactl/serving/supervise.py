"""`python -m pizzactl.serving.supervise SPEC`: keep the local deployment's servers running.

`deploy --target local` starts this small process (detached, so it outlives `pizzactl deploy`);
it starts the children named in SPEC (the model server, then the gateway), restarts one that
crashes, and records what it sees in a JSON status file that `pizzactl status` reads. SIGTERM
(what `teardown` sends) stops the children and then the supervisor.

The restart rule is Docker's `on-failure` policy with a slower start, the kubelet's range:

- Docker (moby `restartmanager/restartmanager.go`; docs "Start containers automatically"):
  `on-failure` restarts only on a non-zero exit, and a container stopped by hand (`docker stop`)
  stays stopped; before each restart it waits a delay that starts at 100 ms and doubles, capped
  at 1 min; the delay goes back to the start once a container has run >= 10 s.
- The kubelet (Kubernetes docs, "Pod Lifecycle: container restarts"; `doBackOff` in
  `pkg/kubelet/kuberuntime`): delays of 10 s, 20 s, 40 s... capped at 5 min, reset after the
  container has run 10 min without trouble; a container waiting out its delay is shown as
  `CrashLoopBackOff`, its restart count beside it.

Here: a server that exits with a non-zero code or is killed by a signal (kill -9, the OOM
killer, a segfault) is restarted after `initial` seconds (1 s), then 2 s, 4 s... up to `max`
(60 s); a run of `reset_after` seconds (60 s) starts the count again. Exit code 0, SIGTERM and
SIGINT are a deliberate stop and are not restarted: with no `docker stop` here, `kill PID` is how
a person stops one server (uvicorn re-raises the SIGTERM after its graceful shutdown, so the exit
shows the signal); Docker would restart a SIGTERM exit (code 143) it did not send itself.
After `crash_loop_after` (3) quick exits in a row the child is in a "crash loop": status reports
it (and keeps retrying, as the kubelet does) instead of hiding it.

Every exit and restart is a line in the supervisor's log (its stdout) and in the child's own
log (appended, so the lines before a crash stay there).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pizzactl.files import wait_until, write_json
from pizzactl.serving.processes import spawn

MODULE = "pizzactl.serving.supervise"
DEFAULT_BACKOFF = {"initial": 1.0, "max": 60.0, "reset_after": 60.0, "crash_loop_after": 3}
DELIBERATE = (0, -signal.SIGTERM, -signal.SIGINT)  # returncodes of a stop someone asked for
HISTORY = 20  # exits kept per child in the status file
POLL = 0.1  # seconds between checks of the children


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def describe_exit(returncode: int) -> str:
    """'exit code 3' or 'signal SIGKILL', as Popen.returncode says (negative: killed by a signal)."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def next_delay(previous: float, ran: float, backoff: dict[str, float]) -> float:
    """The wait before the next restart: `initial` after a long enough run, else twice the last, capped."""
    if previous <= 0 or ran >= backoff["reset_after"]:
        return float(backoff["initial"])
    return float(min(previous * 2, backoff["max"]))


@dataclass
class Child:
    """One supervised server: its command, log, current process and restart bookkeeping."""

    name: str
    cmd: list[str]
    log: str | None
    backoff: dict[str, float]
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    started: float = 0.0  # monotonic
    started_at: str = ""
    restarts: int = 0
    quick_exits: int = 0  # exits in a row, each within reset_after of its start
    delay: float = 0.0  # the last wait before a restart
    restart_at: float | None = None  # monotonic; set while waiting to restart
    restart_at_wall: str | None = None
    stopped: bool = False  # deliberately stopped: not restarted
    history: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> None:

        self.restart_at = self.restart_at_wall = None
        self.started, self.started_at = time.monotonic(), _now()
        try:
            with open(self.log, "ab") if self.log else contextlib.nullcontext() as fh:
                self.proc = spawn(self.cmd, stdout=fh or subprocess.DEVNULL, attached=False, env=self.env)
        except OSError as exc:  # no such program, too many processes: a failure like any other
            self.proc = None
            self.note(f"{self.name} could not start: {exc}")
            self.exited(None, 127, stopping=False)
            return
        self.note(
            f"{self.name} started (pid {self.proc.pid})" + (f", restart {self.restarts}" if self.restarts else "")
        )

    def note(self, line: str) -> None:
        """A line in the supervisor's log (stdout) and in the child's own log."""
        stamped = f"{_now()} [supervisor] {line}"
        print(stamped, flush=True)
        if self.log:
            with contextlib.suppress(OSError), open(self.log, "a") as fh:
                fh.write(stamped + "\n")

    def exited(self, pid: int | None, returncode: int, stopping: bool) -> None:
        """Record an exit; schedule a restart unless it was deliberate or we are stopping."""
        ran = time.monotonic() - self.started
        if pid is not None:
            _kill_group(pid)  # what it left in its process group, as a container's end takes all its processes
        self.proc = None
        how = describe_exit(returncode)
        restart = not stopping and returncode not in DELIBERATE
        entry: dict[str, Any] = {
            "pid": pid,
            "code": returncode if returncode >= 0 else None,
            "signal": how.removeprefix("signal ") if returncode < 0 else None,
            "exit": how,
            "at": _now(),
            "ran_s": round(ran, 3),
            "restarted": restart,
        }
        if not restart:
            self.stopped = True
            self.history = [*self.history, entry][-HISTORY:]
            self.note(f"{self.name} (pid {pid}) stopped: {how} after {ran:.1f}s; not restarted")
            return
        self.quick_exits = self.quick_exits + 1 if ran < self.backoff["reset_after"] else 1
        self.delay = next_delay(self.delay, ran, self.backoff)
        entry["backoff_s"] = self.delay
        self.history = [*self.history, entry][-HISTORY:]
        self.restart_at = time.monotonic() + self.delay
        self.restart_at_wall = datetime.fromtimestamp(time.time() + self.delay, UTC).isoformat(timespec="milliseconds")
        loop = f"; crash loop ({self.quick_exits} quick exits in a row)" if self.crash_loop else ""
        self.note(f"{self.name} (pid {pid}) died: {how} after {ran:.1f}s; restart in {self.delay:g}s{loop}")

    def tick(self, stopping: bool) -> bool:
        """Reap an exit, reset the backoff after a long run, or restart when the wait is over."""
        if self.proc is not None:
            code = self.proc.poll()
            if code is not None:
                self.exited(self.proc.pid, code, stopping)
                return True
            if self.quick_exits and time.monotonic() - self.started >= self.backoff["reset_after"]:
                self.quick_exits, self.delay = 0, 0.0  # ran long enough: the next crash starts the count again
                return True
            return False
        if self.restart_at is not None and not stopping and time.monotonic() >= self.restart_at:
            self.restarts += 1
            self.start()
            return True
        return False

    @property
    def crash_loop(self) -> bool:
        return self.quick_exits >= self.backoff["crash_loop_after"]

    def state(self) -> str:
        if self.proc is not None:
            return "running"
        return "stopped" if self.stopped else "waiting to restart"

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.proc.pid if self.proc is not None else None,
            "state": self.state(),
            "started_at": self.started_at,
            "restarts": self.restarts,
            "quick_exits": self.quick_exits,
            "crash_loop": self.crash_loop,
            "backoff_s": self.delay,
            "next_restart_at": self.restart_at_wall,
            "last_exit": self.history[-1] if self.history else None,
            "history": self.history,
            "log": self.log,
        }


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Supervisor:
    """Start the children in order, watch them every POLL seconds, stop them on SIGTERM/SIGINT."""

    def __init__(self, spec: dict[str, Any]) -> None:
        backoff = {**DEFAULT_BACKOFF, **(spec.get("backoff") or {})}
        env = spec.get("env")
        self.children = [Child(c["name"], list(c["cmd"]), c.get("log"), backoff, env) for c in spec["children"]]
        self.status_file = Path(spec["status_file"])
        self.backoff = backoff
        self.grace = float(spec.get("grace", 8.0))
        self.stopping = False  # a plain flag: the signal handler must not take a lock
        self.state = "starting"

    def write_status(self) -> None:
        write_json(
            self.status_file,
            {
                "supervisor": {"pid": os.getpid(), "state": self.state, "updated": _now()},
                "backoff": self.backoff,
                "children": {c.name: c.as_dict() for c in self.children},
            },
        )

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        names = ", ".join(c.name for c in self.children)
        print(f"{_now()} [supervisor] pid {os.getpid()} supervising {names}", flush=True)
        for child in self.children:
            if not self.stopping:
                child.start()
        self.state = "running"
        self.write_status()
        while not self.stopping:
            if any([child.tick(self.stopping) for child in self.children]):
                self.write_status()
            if all(c.stopped for c in self.children):
                print(f"{_now()} [supervisor] every child was stopped deliberately; exiting", flush=True)
                break
            time.sleep(POLL)
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """SIGTERM each child's process group, SIGKILL after the grace period; record how each ended."""
        self.state = "stopping"
        self.write_status()
        running = [c for c in self.children if c.proc is not None]
        for child in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        wait_until(
            lambda: all(c.proc.poll() is not None for c in running),  # type: ignore[union-attr]
            self.grace,
            0.05,
            what="the children to exit",
            error=None,
        )
        for child in running:
            proc = child.proc
            assert proc is not None
            if proc.poll() is None:
                _kill_group(proc.pid)
                proc.wait()
            child.exited(proc.pid, proc.returncode, stopping=True)
        for child in self.children:
            child.restart_at = child.restart_at_wall = None
            child.stopped = True
        self.state = "stopped"
        self.write_status()
        print(f"{_now()} [supervisor] stopped", flush=True)


def read_status(path: Path | str | None) -> dict[str, Any] | None:
    """The supervisor's status file, or None when there is none (yet) or it cannot be read."""
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def command(spec_path: Path | str) -> list[str]:
    return [sys.executable, "-m", MODULE, str(spec_path)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {MODULE} SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    return Supervisor(spec).run()


if __name__ == "__main__":
    sys.exit(main())
