"""Background jobs: one subprocess per job, state on disk in its run folder.

A run folder holds `config.json`, `status.json` (state, pid, the process's start time, step,
total, eta, ...), `events.jsonl` (one JSON object per logged step), `job.log` (the process
output) and a `stop` flag file the worker checks each step. Nothing lives only in the caller's
memory: a UI reload, a second browser or a script sees the same job by reading these files.

Guarantees: starting a queued job happens under one file lock per runs folder
(`runs/.queue.lock`), so however many processes poll, a job starts once and at most
RADIAL_STUDIO_MAX_JOBS run; reading a status never writes (a dead job is *reported* failed);
a process is recognised by its pid and its start time, so a reused pid is not taken for the
job; a run folder whose files are damaged reads as state "damaged" and leaves the others alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError, InputError

STATES = ("queued", "running", "stopping", "stopped", "finished", "failed", "diverged", "damaged")
FINAL_STATES = ("stopped", "finished", "failed", "diverged", "damaged")
LOCK_NAME = ".queue.lock"
LOCK_TIMEOUT_S = 60
# What a job runs: `python -m engine <argv>` (a test may point it elsewhere).
JOB_COMMAND = [sys.executable, "-m", "engine"]


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
    def _load_status(self) -> tuple[dict, str | None]:
        """(the status, None) or ({}, what is wrong with status.json)."""
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, None
        except UnicodeDecodeError:
            return {}, "status.json is not UTF-8 text"
        except json.JSONDecodeError as err:
            # a writer replaces the file atomically, so this is damage, not a half-written file
            return {}, f"status.json is not valid JSON (line {err.lineno})"
        except OSError as err:
            return {}, f"status.json cannot be read ({err.strerror or type(err).__name__})"
        if not isinstance(data, dict):
            return {}, f"status.json holds a {type(data).__name__}, not an object"
        return data, None

    def read_status(self) -> dict:
        """The status; a damaged status.json reads as {"state": "damaged", "error": ...} (never raises)."""
        status, problem = self._load_status()
        return {"state": "damaged", "error": f"this run folder is damaged: {problem}"} if problem else status

    def update_status(self, **fields) -> dict:
        status = {**self._load_status()[0], **fields, "updated": time.time()}
        atomic_write_json(self.status_path, status)
        return status

    # -- events
    def append_event(self, event: dict) -> None:
        line = json.dumps({"time": round(time.time(), 3), **event}, default=float)
        with open(self.events_path, "a") as f:
            f.write(line + "\n")

    def read_events(self, kind: str | None = None) -> list[dict]:
        """The logged events; lines that are not JSON objects with a whole-number step are skipped."""
        try:
            text = self.events_path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            return []
        events = []
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line being written right now, or damage
                continue
            if not isinstance(event, dict) or not _is_step(event.get("step", 0)):
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


def _is_step(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value, default: float = 0.0) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def process_start_time(pid: int | None) -> float | None:
    """When process `pid` started (seconds since the epoch), or None when there is no such process."""
    import psutil

    if not _is_step(pid) or pid <= 0:
        return None
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def this_process() -> dict:
    """The status fields that identify the calling process (a worker records them when it starts)."""
    return {"pid": os.getpid(), "pid_started": process_start_time(os.getpid())}


def pid_alive(pid: int | None, started: float | None = None) -> bool:
    """Whether the job's process runs: `pid` is alive, not a zombie, and (when `started` is known) it is the
    process that started then, not a later one that was given the same pid."""
    import psutil

    if not _is_step(pid) or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped
            return False
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def runs_root() -> Path:
    """Where jobs' run folders live (`RADIAL_STUDIO_RUNS`, default ./runs)."""
    path = Path(os.environ.get("RADIAL_STUDIO_RUNS") or Path.cwd() / "runs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_job(run_dir: str | os.PathLike, argv: list[str], env: dict | None = None) -> int:
    """Start `python -m engine <argv>` in its own session, output to job.log. Returns the pid.

    The stop flag is left as it is: a stop asked for before the worker got going still stops it.
    """
    run = RunDir(run_dir).create()
    with open(run.log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} python -m engine {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [*JOB_COMMAND, *argv],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent, env={**os.environ, **(env or {})}, start_new_session=True,
        )
    run.update_status(state="running", pid=proc.pid, pid_started=process_start_time(proc.pid), started=time.time(),
                      argv=argv, created=_number(run.read_status().get("created"), time.time()))
    return proc.pid


# Below this much free space a job that died without a word is taken to have met a full disk.
DISK_FULL_BYTES = 64 * 2**20


def disk_full_message(folder: Path) -> str | None:
    """'disk full: ...' when the disk holding `folder` has (almost) no space left, else None."""
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= DISK_FULL_BYTES:
        return None
    return (f"disk full: the disk holding the run folder has {free / 2**20:.0f} MiB free, so the job could not write "
            "its files. Free some space, then resume the run (its last complete checkpoint is kept).")


def job_status(run_dir: str | os.PathLike) -> dict:
    """The job's status, read only: a job whose process is gone without finishing reads as failed."""
    run = RunDir(run_dir)
    status = run.read_status()
    if status.get("state") in ("running", "stopping") and not pid_alive(status.get("pid"), status.get("pid_started")):
        why = disk_full_message(run.path) or status.get("error") or "the job process exited unexpectedly"
        status = {**status, "state": "failed", "error": why, "log_tail": run.log_tail()}
    return status


def pump_queue_quietly(root: Path | None = None) -> None:
    """Start what can start before a status read; a read must not fail because a job cannot start right now
    (a full disk, a busy lock): the job stays queued and the next poll tries again."""
    try:
        pump_queue(root)
    except (OSError, TimeoutError) as err:
        import logging

        logging.getLogger(__name__).warning("could not start queued jobs now: %s", err)


def clean_leftovers(run: RunDir) -> list[str]:
    """Remove what a worker that died mid-write left behind (`.tmp-*` folders, half-written temporary files)."""
    import shutil

    removed = []
    for folder in (run.path, run.checkpoints_dir):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            # half-written files of atomic writes: only old ones (another process may be writing one right now)
            stale_file = (p.name.startswith(".") and p.is_file() and p.name != LOCK_NAME and p.name.count(".") >= 2
                          and time.time() - p.stat().st_mtime > 60)
            if p.name.startswith(".tmp-") or stale_file:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p.name)
    return removed


def stop_job(run_dir: str | os.PathLike) -> None:
    """Ask the worker to finish its current step, checkpoint and exit; a queued job is taken out of the queue."""
    run = RunDir(run_dir)
    with queue_lock(run.path.parent):
        state = job_status(run.path).get("state")
        if state not in ("queued", "running", "stopping"):
            # A stop flag left on an ended run would stop its next resume at once: say so instead.
            raise InputError(f"run '{run.path.name}' is {state or 'not started'}: there is nothing to stop.")
        if state == "queued":  # never started: it will not start now
            run.update_status(state="stopped")
        run.request_stop()


def kill_job(run_dir: str | os.PathLike) -> None:
    status = RunDir(run_dir).read_status()
    pid = status.get("pid")
    if pid_alive(pid, status.get("pid_started")):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


# ---------------------------------------------------------------------------- the GPU queue
# One job runs at a time by default (they share the accelerator); others wait as "queued" in
# their own status.json. `pump_queue` starts the oldest queued job when nothing runs; the app
# calls it on every status poll, so the queue lives on disk and survives the UI.


def max_concurrent_jobs() -> int:
    raw = os.environ.get("RADIAL_STUDIO_MAX_JOBS", "1")
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"RADIAL_STUDIO_MAX_JOBS={raw!r} is not a whole number; set it to the number of GPU jobs "
                          "that may run at once (1 for one GPU).") from None
    if value < 1:
        raise ConfigError(f"RADIAL_STUDIO_MAX_JOBS={value}: at least 1 job must be allowed to run.")
    return value


@contextmanager
def queue_lock(root: Path):
    """The lock every queue change (start, stop of a queued job) is made under, across processes."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / LOCK_NAME), timeout=LOCK_TIMEOUT_S):
        yield


def list_run_dirs(root: Path | None = None) -> list[Path]:
    root = root or runs_root()
    return sorted((p for p in root.iterdir() if p.is_dir() and (p / "status.json").is_file()),
                  key=lambda p: (_number(RunDir(p).read_status().get("created")), p.name))


def submit_job(run_dir: str | os.PathLike, argv: list[str], root: Path | None = None) -> dict:
    """Queue a job; it starts at once if a slot is free. Returns its status."""
    run = RunDir(run_dir).create()
    run.clear_stop()  # a new request: an old stop flag is spent
    run.update_status(state="queued", queued_at=time.time(), argv=argv, pid=None, pid_started=None, error=None,
                      created=_number(run.read_status().get("created"), time.time()))
    pump_queue(root or run.path.parent)
    return job_status(run.path)


def pump_queue(root: Path | None = None) -> None:
    """Start the oldest queued jobs while fewer than RADIAL_STUDIO_MAX_JOBS run (atomic across processes)."""
    root = root or runs_root()
    limit = max_concurrent_jobs()
    with queue_lock(root):
        statuses = {p: job_status(p) for p in list_run_dirs(root)}
        running = sum(1 for s in statuses.values() if s.get("state") in ("running", "stopping"))
        queued = sorted((_number(s.get("queued_at")), p) for p, s in statuses.items() if s.get("state") == "queued")
        for _, path in queued[: max(0, limit - running)]:
            argv = statuses[path].get("argv")
            if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
                RunDir(path).update_status(state="failed", error="the queued job has no valid command (argv)")
                continue
            start_job(path, argv)


REQUEST_PREFIX = "_request-"  # the lease folder of GPU work done inside a request


@contextmanager
def gpu_request(what: str, root: Path | None = None):
    """GPU work done inside a request (Generate, Compare) under the one-GPU-job rule.

    Refused (InputError naming what holds the GPU and the fix) when RADIAL_STUDIO_MAX_JOBS jobs run already.
    While it runs it holds a slot: a lease folder `_request-*` whose status reads "running" with this
    process's pid, which the queue counts like a job, so no queued job starts beside it. A lease left by
    a process that died reads as failed (not counted) and is removed by the next request.
    """
    root = root or runs_root()
    limit = max_concurrent_jobs()
    with queue_lock(root):
        busy = []
        for path in list_run_dirs(root):
            state = job_status(path).get("state")
            if path.name.startswith(REQUEST_PREFIX) and state not in ("running", "stopping"):
                shutil.rmtree(path, ignore_errors=True)  # the lease of a request whose process died
            elif state in ("running", "stopping"):
                busy.append("another Generate or Compare request" if path.name.startswith(REQUEST_PREFIX)
                            else f"run {path.name}")
        if len(busy) >= limit:
            raise InputError(f"{what} needs the GPU, and {', '.join(busy)} is using it (at most {limit} GPU job(s) "
                             "at once, RADIAL_STUDIO_MAX_JOBS). Wait until it finishes or stop it, then try again.")
        lease = RunDir(root / f"{REQUEST_PREFIX}{uuid.uuid4().hex[:12]}").create()
        lease.update_status(state="running", kind="request", what=what, created=time.time(), **this_process())
    try:
        yield
    finally:
        shutil.rmtree(lease.path, ignore_errors=True)
        pump_queue_quietly(root)  # a job queued meanwhile starts now


def queue_position(run_dir: str | os.PathLike, root: Path | None = None) -> int | None:
    """1 for the next job to start; None when the job is not queued."""
    run_dir = Path(run_dir)
    root = root or run_dir.parent
    statuses = {p: RunDir(p).read_status() for p in list_run_dirs(root)}
    queued = sorted((_number(s.get("queued_at")), p) for p, s in statuses.items() if s.get("state") == "queued")
    for i, (_, path) in enumerate(queued, start=1):
        if path == run_dir:
            return i
    return None
