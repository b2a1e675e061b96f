"""Fit a family's memory-plan coefficients (`ModelFamily.MEMORY_FIT`) to whole-model rows of bench/train_memory.py.

The plan's per-step model (engine/memory/plan.py) is linear in the three coefficients:
  peak = fixed + inflight x (one block input, with offload_activations; else every block's) + tokens x
         (a x width + b x ffn_width / ffn_chunks)
so the parts that do not depend on them come from the plan itself (`estimate` with unit coefficients), and:
  a x width + b x ffn_width   from the no-option rows (their mean per token; their spread is the fit's check),
  b                           from a no-option row and the ffn_chunks row at the same length,
  inflight                    from the offload_activations row without slices.
Every row is then predicted with the fitted coefficients and the error printed.

    python3 bench/memory_fit.py docs/bench_runs/run30_train_memory_hunyuan.json --model hunyuan
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_memory import MODELS, SIZE, full_layers  # noqa: E402  (bench/, the script's folder)



def _options(label: str) -> tuple[bool, bool, int]:
    parts = label.split("+")
    return "fp8" in parts, "offload" in parts, next((int(p[5:]) for p in parts if p.startswith("chunk")), 1)


def _parts(family, config, fit: dict, options: tuple) -> dict:
    from engine.memory.plan import estimate

    saved, type(family).MEMORY_FIT = type(family).MEMORY_FIT, fit
    try:
        return estimate(config, config.preset_dict(), *options).parts
    finally:
        type(family).MEMORY_FIT = saved


def fit(rows: list[dict], model: str) -> tuple[dict, list[tuple]]:
    """(MEMORY_FIT, [(row, predicted GiB)]) for the measured `rows` of `model` (a train_memory.py model key)."""
    from engine.config import config_from_preset
    from engine.models import family_named

    fam = family_named(MODELS[model][0])
    h, w = SIZE[model]
    zero = {"bytes_per_token_width": 0.0, "bytes_per_token_ffn": 0.0, "inflight_blocks": 0.0}
    terms = []
    for r in rows:
        config = config_from_preset(MODELS[model][1], data_dir="-", output_dir="-", height=h, width=w,
                                    base_num_frames=r["base"], extended_num_frames=r["extended"])
        options = _options(r["options"])
        base = _parts(fam, config, zero, options)
        per_a = _parts(fam, config, {**zero, "bytes_per_token_width": 1.0}, options)["recompute"]
        per_b = _parts(fam, config, {**zero, "bytes_per_token_ffn": 1.0}, options)["recompute"]
        per_inflight = _parts(fam, config, {**zero, "inflight_blocks": 1.0}, options)["saved_inputs"]
        fixed = sum(base.values())  # weights, LoRA state, saved inputs without offload
        terms.append((r, config, options, fixed, per_a, per_b, per_inflight))

    plain = [t for t in terms if t[2] == (False, False, 1)]
    # a x width + b x ffn_width, in units of per_a (tokens x width / GiB): c = a + b x ffn/width
    ratio = plain[0][5] / plain[0][4]  # ffn_width / width
    c = sum((t[0]["peak_gib"] - t[3]) / t[4] for t in plain) / len(plain)
    chunked = next(t for t in terms if t[2][:2] == (False, False) and t[2][2] > 1)
    same = next(t for t in plain if t[0]["extended"] == chunked[0]["extended"])
    # peak(1) - peak(N) = b x per_b(1) x (1 - 1/N); per_b of the chunked row is already divided by N
    b = (same[0]["peak_gib"] - chunked[0]["peak_gib"]) / (same[5] - chunked[5])
    a = c - b * ratio
    off = next(t for t in terms if t[2] == (False, True, 1))
    inflight = (off[0]["peak_gib"] - off[3] - a * off[4] - b * off[5]) / off[6]
    result = {"bytes_per_token_width": round(a, 2), "bytes_per_token_ffn": round(b, 2),
              "inflight_blocks": round(inflight, 1)}
    predicted = [(t[0], t[3] + result["bytes_per_token_width"] * t[4] + result["bytes_per_token_ffn"] * t[5]
                  + (result["inflight_blocks"] * t[6] if t[2][1] else 0.0)) for t in terms]
    return result, predicted


def whole_model_rows(data: dict, model: str) -> list[dict]:
    """The rows a fit reads: `model`'s whole models that ran, without block swap or FSDP (run 30 counted
    HunyuanVideo's patch embedder and text refiner as blocks: 62)."""
    return [r for r in data["rows"] if r["size"] == model and r["layers"] >= full_layers(model)
            and not r.get("oom") and "swap" not in r["options"] and "fsdp" not in r["options"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", help="a train_memory.json")
    parser.add_argument("--model", default="hunyuan", choices=sorted(MODELS))
    args = parser.parse_args()
    data = json.loads(Path(args.rows).read_text())
    result, predicted = fit(whole_model_rows(data, args.model), args.model)
    print(f"{data.get('device', '?')}: MEMORY_FIT = {json.dumps(result)}")
    print("| frames | options | measured GiB | predicted GiB | error |")
    print("|---|---|---|---|---|")
    for r, p in predicted:
        print(f"| {r['base']} -> {r['extended']} | {r['options']} | {r['peak_gib']:.1f} | {p:.1f} | "
              f"{p / r['peak_gib'] - 1:+.0%} |")


if __name__ == "__main__":
    main()
