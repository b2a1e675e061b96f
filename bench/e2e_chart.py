"""One PNG from bench/e2e.py's JSON: time vs video frame count, dense vs radial, sampling and training side by side.

    python3 bench/e2e_chart.py DIR_OR_JSON [...] --out docs/bench_e2e.png

Sampling plots the whole generate_video call (measured, solid); where e2e.py projected to more steps, the
projection is drawn dashed and labelled so. Training plots one LoRA length-extension step. Each radial point is
annotated with its speed-up over dense at that frame count.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def find_results(paths: list[str]) -> dict[str, dict]:
    """{"sample": data, "train": data} from e2e_<case>.json files, given directly or inside folders (the last
    file named for a case wins)."""
    found: dict[str, dict] = {}
    for raw in paths:
        path = Path(raw)
        files = sorted(path.glob("e2e_*.json")) if path.is_dir() else [path]
        for file in files:
            data = json.loads(file.read_text())
            if isinstance(data, dict) and data.get("case") in ("sample", "train"):
                found[data["case"]] = data
    return found


def _series(rows: list[dict], key: str, pattern: str, projection: bool = False):
    xs, ys = [], []
    for row in sorted(rows, key=lambda r: r["frames"]):
        if row.get("pattern") != pattern:
            continue
        value = (row.get("projection") or {}).get("total_s") if projection else row.get(key)
        if value is not None:
            xs.append(row["frames"])
            ys.append(value)
    return xs, ys


def _annotate(ax, dense, radial):
    by_frame = dict(zip(*dense))
    for x, y in zip(*radial):
        if x in by_frame and y > 0:
            ax.annotate(f"{by_frame[x] / y:.2f}x", (x, y), textcoords="offset points", xytext=(4, -12), fontsize=8)


def draw(results: dict[str, dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("sample", "total_s", "Sampling: whole generate_video call"),
              ("train", "step_s", "Training: one LoRA length-extension step"))
    colours = {"dense": "tab:gray", "radial": "tab:blue"}
    device = None
    for ax, (case, key, title) in zip(axes, panels):
        data = results.get(case)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("video frames")
        ax.set_ylabel("seconds")
        ax.grid(True, alpha=0.3)
        if not data:
            ax.text(0.5, 0.5, f"no {case} results", ha="center", va="center", transform=ax.transAxes)
            continue
        device = device or data.get("env", {}).get("device")
        rows = data["rows"]
        steps = data.get("settings", {}).get("steps")
        measured = {p: _series(rows, key, p) for p in ("dense", "radial")}
        for pattern, (xs, ys) in measured.items():
            if xs:
                label = pattern + (f" ({steps} steps measured)" if case == "sample" and steps else "")
                ax.plot(xs, ys, "o-", color=colours[pattern], label=label)
        _annotate(ax, measured["dense"], measured["radial"])
        if case == "sample":
            projected = {p: _series(rows, key, p, projection=True) for p in ("dense", "radial")}
            target = next((r["projection"]["steps"] for r in rows if r.get("projection")), None)
            for pattern, (xs, ys) in projected.items():
                if xs:
                    ax.plot(xs, ys, "s--", color=colours[pattern], alpha=0.8,
                            label=f"{pattern}, projection to {target} steps")
            _annotate(ax, projected["dense"], projected["radial"])
        frames = sorted({r["frames"] for r in rows})
        ax.set_xticks(frames)
        ax.legend(fontsize=8)
    fig.suptitle(f"Radial vs dense attention end to end{f' ({device})' if device else ''}", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", default=[os.environ.get("OUT", ".")],
                        help="e2e_*.json files or folders holding them (default $OUT, else .)")
    parser.add_argument("--out", default="docs/bench_e2e.png")
    args = parser.parse_args(argv)
    results = find_results(args.inputs)
    if not results:
        raise SystemExit(f"no e2e_sample.json / e2e_train.json in {args.inputs}")
    path = draw(results, Path(args.out))
    print(path)
    return path


if __name__ == "__main__":
    main()
