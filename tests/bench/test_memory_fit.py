"""bench/memory_fit.py on the measured rows: it gives back the coefficients the families carry."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import memory_fit  # noqa: E402


def _fit(run: str, model: str):
    data = json.loads((ROOT / "docs" / "bench_runs" / run).read_text())
    return memory_fit.fit(memory_fit.whole_model_rows(data, model), model)


def test_hunyuanvideos_committed_fit_is_what_the_tool_gives_and_it_reproduces_each_row():
    from engine.models.hunyuan import HunyuanVideoFamily

    result, predicted = _fit("run30_train_memory_hunyuan.json", "hunyuan")
    assert result == HunyuanVideoFamily.MEMORY_FIT
    assert len(predicted) == 4
    for row, gib in predicted:
        assert gib == pytest.approx(row["peak_gib"], rel=0.01), row


def test_on_wans_1_3b_rows_alone_it_lands_on_the_joint_wan_fit():
    from engine.models.wan import WanFamily

    result, predicted = _fit("run17_train_memory.json", "1.3b")
    assert result["bytes_per_token_width"] == pytest.approx(WanFamily.MEMORY_FIT["bytes_per_token_width"], rel=0.02)
    assert result["bytes_per_token_ffn"] == pytest.approx(WanFamily.MEMORY_FIT["bytes_per_token_ffn"], rel=0.03)
    assert all(abs(gib / row["peak_gib"] - 1) < 0.05 for row, gib in predicted)
