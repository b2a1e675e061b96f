"""Run management: delete a run, read its log, see the whole job queue.

Deleting is refused while the run's job is queued or running (stop it first). It happens under the
queue lock, so no poll starts the job meanwhile, and atomically: the folder is renamed to a private
name (no longer a run) and only then removed; a removal cut short leaves a hidden `_deleting-*`
folder, which the next delete clears. Only folders of the runs root are touched, found from the run
id (never from paths recorded in the run's files).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from ..errors import InputError
from ..jobs import (
    REQUEST_PREFIX,
    RunDir,
    job_status,
    list_run_dirs,
    pump_queue_quietly,
    queue_lock,
    runs_root,
)
from ..safe_paths import is_inside
from .run_files import exports_root, owned_run_dir

ACTIVE_STATES = ("queued", "running", "stopping")
TRASH_PREFIX = "_deleting-"
LOG_TAIL_BYTES = 256 * 1024  # a log can grow large: only its end is read


def _own_folders(run_id: str) -> list[Path]:
    """The private folders made for a run besides its own: its prepared dataset, staged uploads, given-out files."""
    root = runs_root()
    return [root / "_datasets" / run_id, root / "_datasets" / f"{run_id}-uploads", root / "_inputs" / run_id,
            exports_root() / run_id]


def _remove(path: Path) -> None:
    if path.is_symlink():  # a link is removed, never what it points to
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def delete_run(run_id: str) -> dict:
    """Remove a run's folder and its private data. InputError when it is queued or running."""
    root = runs_root()
    path = owned_run_dir(run_id)
    with queue_lock(root):
        state = job_status(path).get("state")
        if state in ACTIVE_STATES:
            raise InputError(f"run '{run_id}' is {state}: stop it first (Stop), wait until it reads stopped, then "
                             "delete it.")
        trash = root / f"{TRASH_PREFIX}{run_id}-{uuid.uuid4().hex[:6]}"
        path.rename(trash)  # from here on it is no run: no list shows it, no queue starts it
        extras = []
        for folder in _own_folders(run_id):
            # one that resolves outside the runs root (a linked _datasets) is left alone: it is not ours to move
            if (folder.is_symlink() or folder.exists()) and is_inside(root, folder.parent):
                moved = root / f"{TRASH_PREFIX}{run_id}-{folder.parent.name}-{uuid.uuid4().hex[:6]}"
                folder.rename(moved)
                extras.append(moved)
    for leftover in [trash, *extras, *(p for p in root.glob(f"{TRASH_PREFIX}*") if p not in (trash, *extras))]:
        _remove(leftover)
    return {"run_id": run_id, "deleted": True}


def run_log(run_id: str, lines: int = 200) -> str:
    """The last `lines` lines of the run's job output (job.log), or a sentence saying why there is none."""
    if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= 5000:
        raise InputError(f"lines={lines!r}: give a whole number of log lines from 1 to 5000.")
    log = RunDir(owned_run_dir(run_id)).log_path
    if log.is_symlink() or not log.is_file():
        return f"Run {run_id} has no log yet: its job writes one once it starts."
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - LOG_TAIL_BYTES))
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def job_queue() -> list[dict]:
    """The jobs that hold or wait for the GPU: running ones first, then the queue in the order it starts.

    Each: run_id (None for Generate/Compare work inside a request), kind, state, position (1: starts next;
    None: running), preset, step, total_steps, since (when it started or was queued)."""
    pump_queue_quietly()
    running, queued = [], []
    for path in list_run_dirs(runs_root()):
        if path.name.startswith(TRASH_PREFIX):
            continue
        s = job_status(path)
        state = s.get("state")
        if state not in ACTIVE_STATES:
            continue
        request = path.name.startswith(REQUEST_PREFIX)
        row = {"run_id": None if request else path.name, "kind": s.get("what", "request") if request
               else s.get("kind", "train"), "state": state, "position": None, "preset": s.get("preset"),
               "step": s.get("step", 0), "total_steps": s.get("total_steps"),
               "since": s.get("queued_at") if state == "queued" else s.get("started", s.get("created"))}
        (queued if state == "queued" else running).append(row)
    running.sort(key=lambda r: r["since"] or 0)
    queued.sort(key=lambda r: r["since"] or 0)
    for i, row in enumerate(queued, start=1):
        row["position"] = i
    return running + queued
