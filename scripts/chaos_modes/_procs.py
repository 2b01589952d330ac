"""The processes of a chaos trial: ``Run`` (one ``run_all.py`` in a session of its own) and the
/proc look-ups that find its workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300  # a run still going after this is a hang


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "RAY_ADDRESS")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


class Run:
    """One ``run_all.py`` process, in a session of its own, logging to ``log``."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.fh = open(log, "wb")
        self.t0 = time.time()
        self.proc = subprocess.Popen([sys.executable, "run_all.py", *args], cwd=REPO, stdout=self.fh,
                                     stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
        self.pid = self.proc.pid
        self.seen: set[int] = set()  # pids met in its session (cleanup)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int | None:
        """Exit code; None if it hung past ``timeout`` (then it is killed)."""
        try:
            rc = self.proc.wait(timeout=max(1.0, timeout - (time.time() - self.t0)))
        except subprocess.TimeoutExpired:
            rc = None
        self.cleanup()
        return rc

    def kill(self) -> bool:
        """SIGKILL the driver; True if it was alive."""
        if not self.alive():
            return False
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()
        return True

    def session(self) -> list[int]:
        """Live processes of this run's session (the driver's and all it started that stayed)."""
        out = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and sid(int(d.name)) == self.pid]
        self.seen.update(out)
        return out

    def cleanup(self) -> None:
        """Kill whatever of this run is still around (by pid: only processes of its session)."""
        self.session()
        for pid in sorted(self.seen):
            if pid != os.getpid() and sid(pid) == self.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.fh.close()


def sid(pid: int) -> int | None:
    """The session id of ``pid``; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[int]:
    kids = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(x) for x in f.read_text().split()]
        except OSError:
            pass
    return kids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def spawn_workers(pid: int) -> list[int]:
    """The driver's multiprocessing workers (not its resource tracker or git)."""
    return [k for k in children(pid) if "spawn_main" in cmdline(k)]


def sleep_while(run: Run, seconds: float) -> None:
    """Sleep ``seconds`` or until ``run`` ends, noting its session's processes meanwhile."""
    end = time.time() + seconds
    while run.alive() and time.time() < end:
        run.session()
        time.sleep(0.02)
