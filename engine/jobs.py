"""Background jobs: one subprocess per job, state on disk in its run folder.

A run folder holds `config.json`, `status.json` (state, pid, step, total, eta, ...),
`events.jsonl` (one JSON object per logged step), `job.log` (the process output) and a
`stop` flag file the worker checks each step. Nothing lives only in the caller's memory: a
UI reload, a second browser or a script sees the same job by reading these files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STATES = ("queued", "running", "stopping", "stopped", "finished", "failed", "diverged")
FINAL_STATES = ("stopped", "finished", "failed", "diverged")


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str | os.PathLike, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(data, indent=2, default=str))


class RunDir:
    """The files of one run. Safe to use from the worker and from readers at the same time."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    status_path = property(lambda self: self.path / "status.json")
    events_path = property(lambda self: self.path / "events.jsonl")
    log_path = property(lambda self: self.path / "job.log")
    stop_path = property(lambda self: self.path / "stop")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    samples_dir = property(lambda self: self.path / "samples")

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # -- status
    def read_status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def update_status(self, **fields) -> dict:
        status = {**self.read_status(), **fields, "updated": time.time()}
        atomic_write_json(self.status_path, status)
        return status

    # -- events
    def append_event(self, event: dict) -> None:
        line = json.dumps({"time": round(time.time(), 3), **event}, default=float)
        with open(self.events_path, "a") as f:
            f.write(line + "\n")

    def read_events(self, kind: str | None = None) -> list[dict]:
        if not self.events_path.is_file():
            return []
        events = []
        for line in self.events_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line being written right now
                continue
            if kind is None or event.get("type") == kind:
                events.append(event)
        return events

    def truncate_events_after(self, step: int) -> None:
        """On resume, drop events logged after the checkpoint we restart from."""
        kept = [e for e in self.read_events() if e.get("step", 0) <= step]
        _atomic_write_text(self.events_path, "".join(json.dumps(e) + "\n" for e in kept))

    # -- stop flag
    def request_stop(self) -> None:
        self.stop_path.touch()
        if self.read_status().get("state") == "running":
            self.update_status(state="stopping")

    def stop_requested(self) -> bool:
        return self.stop_path.exists()

    def clear_stop(self) -> None:
        self.stop_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # A zombie (exited, not yet reaped) still answers kill(0); check its state on Linux.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def runs_root() -> Path:
    """Where jobs' run folders live (`RADIAL_STUDIO_RUNS`, default ./runs)."""
    path = Path(os.environ.get("RADIAL_STUDIO_RUNS") or Path.cwd() / "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_job(run_dir: str | os.PathLike, argv: list[str], env: dict | None = None) -> int:
    """Start `python -m engine <argv>` in its own session, output to job.log. Returns the pid."""
    run = RunDir(run_dir).create()
    run.clear_stop()
    log = open(run.log_path, "ab")
    log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} python -m engine {' '.join(argv)}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *argv],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parent.parent, env={**os.environ, **(env or {})}, start_new_session=True,
    )
    log.close()
    run.update_status(state="running", pid=proc.pid, started=time.time(), argv=argv,
                      created=run.read_status().get("created", time.time()))
    return proc.pid


def job_status(run_dir: str | os.PathLike) -> dict:
    """The job's status; a job whose process died without finishing is reported as failed."""
    run = RunDir(run_dir)
    status = run.read_status()
    if status.get("state") in ("running", "stopping") and not pid_alive(status.get("pid")):
        status = run.update_status(state="failed", error="the job process exited unexpectedly",
                                   log_tail=run.log_tail())
    return status


def stop_job(run_dir: str | os.PathLike) -> None:
    """Ask the worker to finish its current step, checkpoint and exit."""
    RunDir(run_dir).request_stop()


def kill_job(run_dir: str | os.PathLike) -> None:
    pid = RunDir(run_dir).read_status().get("pid")
    if pid_alive(pid):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


# ---------------------------------------------------------------------------- the GPU queue
# One job runs at a time by default (they share the accelerator); others wait as "queued" in
# their own status.json. `pump_queue` starts the oldest queued job when nothing runs; the app
# calls it on every status poll, so the queue lives on disk and survives the UI.


def max_concurrent_jobs() -> int:
    return max(1, int(os.environ.get("RADIAL_STUDIO_MAX_JOBS", "1")))


def list_run_dirs(root: Path | None = None) -> list[Path]:
    root = root or runs_root()
    return sorted((p for p in root.iterdir() if p.is_dir() and (p / "status.json").is_file()),
                  key=lambda p: RunDir(p).read_status().get("created", 0))


def submit_job(run_dir: str | os.PathLike, argv: list[str], root: Path | None = None) -> dict:
    """Queue a job; it starts at once if a slot is free. Returns its status."""
    run = RunDir(run_dir).create()
    run.clear_stop()
    run.update_status(state="queued", queued_at=time.time(), argv=argv, pid=None, error=None,
                      created=run.read_status().get("created", time.time()))
    pump_queue(root or run.path.parent)
    return job_status(run.path)


def pump_queue(root: Path | None = None) -> None:
    root = root or runs_root()
    statuses = {p: job_status(p) for p in list_run_dirs(root)}
    running = sum(1 for s in statuses.values() if s.get("state") in ("running", "stopping"))
    queued = sorted((s.get("queued_at", 0), p) for p, s in statuses.items() if s.get("state") == "queued")
    for _, path in queued[: max(0, max_concurrent_jobs() - running)]:
        start_job(path, statuses[path]["argv"])


def queue_position(run_dir: str | os.PathLike, root: Path | None = None) -> int | None:
    """1 for the next job to start; None when the job is not queued."""
    run_dir = Path(run_dir)
    root = root or run_dir.parent
    queued = sorted((RunDir(p).read_status().get("queued_at", 0), p) for p in list_run_dirs(root)
                    if RunDir(p).read_status().get("state") == "queued")
    for i, (_, path) in enumerate(queued, start=1):
        if path == run_dir:
            return i
    return None
