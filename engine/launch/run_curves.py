"""Two training runs' loss curves on one plot: the total training loss (EMA-smoothed) and validation loss.

Series have fixed names ("this run: total", ...) whatever runs are compared: a plot's colour scale is
built from the first series it draws, so names that changed with the runs would draw uncoloured lines.
"""

from __future__ import annotations

from ..errors import InputError
from ..jobs import RunDir, job_status
from .run_files import owned_run_dir

ROLES = ("this run", "other run")
COMPARE_SERIES = tuple(f"{role}: {term}" for role in ROLES for term in ("total", "validation"))


def _curves(run_id: str, role: str, smoothing: float) -> list[dict]:
    path = owned_run_dir(run_id)
    kind = job_status(path).get("kind", "train")
    if kind != "train":
        raise InputError(f"run '{run_id}' is a {kind} run; loss curves are compared between training runs.")
    run, rows, ema = RunDir(path), [], None
    for e in run.read_events("train"):
        if isinstance(e.get("loss"), (int, float)):
            ema = e["loss"] if ema is None else smoothing * ema + (1 - smoothing) * e["loss"]
            rows.append({"step": e["step"], "value": float(ema), "series": f"{role}: total", "run_id": run_id})
    rows += [{"step": e["step"], "value": float(e["val_loss"]), "series": f"{role}: validation", "run_id": run_id}
             for e in run.read_events("validation") if isinstance(e.get("val_loss"), (int, float))]
    return rows


def compare_run_losses(run_id: str, other_run_id: str, smoothing: float = 0.0) -> dict:
    """{"runs": {role: run id}, "rows": [{step, value, series, run_id}], "series": COMPARE_SERIES}."""
    if not other_run_id:
        raise InputError("pick a second run to compare with.")
    if other_run_id == run_id:
        raise InputError(f"run '{run_id}' is compared with itself; pick another run to compare with.")
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise InputError(f"smoothing={smoothing!r}: choose a number from 0 (none) to below 1.")
    rows = _curves(run_id, ROLES[0], float(smoothing)) + _curves(other_run_id, ROLES[1], float(smoothing))
    return {"runs": dict(zip(ROLES, (run_id, other_run_id))), "rows": rows, "series": COMPARE_SERIES}
