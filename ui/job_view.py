"""Text and tables shared by the tabs that follow background jobs."""

from __future__ import annotations

import pandas as pd


def job_status_markdown(status: dict, title: str) -> str:
    """One status line (state, queue, phase, step, speed, ETA, losses), then any error and log tail."""
    state = status.get("state")
    parts = [f"**{title}**: {state}"]
    if status.get("queue_position"):
        parts.append(f"queue position {status['queue_position']}")
    if status.get("phase") and state == "running":
        parts.append(f"phase {status['phase']}")
    if status.get("total_steps"):
        parts.append(f"step {status.get('step', 0)}/{status['total_steps']}")
    if status.get("it_per_s"):
        parts.append(f"{status['it_per_s']:.2f} it/s")
    if status.get("eta_seconds") and state == "running":
        parts.append(f"ETA {status['eta_seconds']:.0f} s")
    if status.get("loss") is not None:
        parts.append(f"loss {status['loss']:.4f}")
    if status.get("best_val_loss") is not None:
        parts.append(f"best val {status['best_val_loss']:.4f}")
    line = " · ".join(parts)
    if status.get("error"):
        line += f"\n\n**Error:** {status['error']}"
    if status.get("warning"):
        line += f"\n\n**Note:** {status['warning']}"
    if status.get("skipped_uploads"):
        shown = status["skipped_uploads"]
        line += (f"\n\n**{len(shown)} upload(s) left out of the dataset:** " + "; ".join(shown[:8])
                 + (" ..." if len(shown) > 8 else ""))
    if status.get("skipped_clips"):
        shown = status["skipped_clips"]
        line += (f"\n\n**{len(shown)} clip(s) of the data folder left out:** " + "; ".join(shown[:8])
                 + (" ..." if len(shown) > 8 else ""))
    if status.get("log_tail"):
        line += f"\n\n```\n{status['log_tail']}\n```"
    return line


def curves_frame(rows: list[dict], series: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """A long table (step, value, series) for gr.LinePlot, or None before the first point.

    None rather than an empty table: a LinePlot that first held an empty table draws later
    data with no colour scale (invisible lines, no legend; seen with Gradio 6.31). Explicit
    dtypes keep the values numeric.

    `series`: every series the plot will show. Gradio 6.31 fixes the colour domain to the series in
    the first table it draws and never widens it, so a run whose first point is its step-0
    validation would keep a one-entry legend and colourless lines. Each series missing so far gets
    one point with no value (drawn as nothing) so the domain is whole from the start."""
    if not rows:
        return None
    present = {r["series"] for r in rows}
    first = min(r["step"] for r in rows)
    rows = rows + [{"step": first, "value": float("nan"), "series": name} for name in series if name not in present]
    return pd.DataFrame(rows, columns=["step", "value", "series"]).astype(
        {"step": "int64", "value": "float64", "series": "str"})
