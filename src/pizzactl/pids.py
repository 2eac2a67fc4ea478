"""Is a process still there? Standard library only (`os.kill(pid, 0)`, /proc when there is one),
so the servers' supervision and an export's stale-temp cleanup can share it without importing
each other.
"""

from __future__ import annotations

import os
from pathlib import Path


def _reap(pid: int) -> bool:
    """Collect our own exited child so it does not linger as a zombie; True if it was reaped."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child
        return False
    return done == pid


def proc_file(pid: int, name: str) -> bytes | None:
    """/proc/<pid>/<name>, or None (gone, not ours to read, or no /proc)."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def pid_alive(pid: int | None) -> bool:
    """True while the process exists and is not a zombie."""
    if not pid or pid <= 0:
        return False
    if _reap(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = proc_file(pid, "stat")
    if stat is not None:
        state = stat.rsplit(b")", 1)[-1].split()[:1]
        if state and state[0] in (b"Z", b"X"):
            return False
    return True
