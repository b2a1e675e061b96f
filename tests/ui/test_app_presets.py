"""Each tab offers only the presets whose model family can do its task (engine.api.presets_for)."""

import gradio as gr


def _preset_choices_by_tab(demo) -> dict[str, list[str]]:
    out = {}
    for block in demo.blocks.values():
        if isinstance(block, gr.Dropdown) and block.label in ("Preset", "Backbone preset"):
            parent = block.parent
            while parent is not None and not isinstance(parent, gr.Tab):
                parent = parent.parent
            out[parent.label] = [value for _, value in block.choices]
    return out


def test_tabs_list_the_presets_their_task_allows(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIAL_STUDIO_RUNS", str(tmp_path / "runs"))
    from app import build_app
    from engine import api

    tabs = _preset_choices_by_tab(build_app("tiny-wan"))
    assert tabs["Length extension"] == api.presets_for("length_extension")
    assert "tiny-wan-vace" not in tabs["Length extension"] and "tiny-opensora2" not in tabs["Length extension"]
    assert tabs["Generate"] == tabs["Compare"] == api.presets_for("generate")
    assert "tiny-opensora2" not in tabs["Generate"]
    assert tabs["Test-time adaptation"] == api.presets_for("tta") and "tiny-opensora2" in tabs["Test-time adaptation"]
    # The Wan2.2 and HunyuanVideo families: HunyuanVideo's T2V model cannot continue a clip, so no TTA.
    for name in ("tiny-wan2.2-a14b", "tiny-wan2.2-ti2v-5b", "tiny-hunyuanvideo", "tiny-hunyuanvideo-1.5"):
        assert name in tabs["Length extension"] and name in tabs["Generate"], name
    assert "tiny-wan2.2-a14b" in tabs["Test-time adaptation"] and "tiny-wan2.2-ti2v-5b" in tabs["Test-time adaptation"]
    assert "tiny-hunyuanvideo" not in tabs["Test-time adaptation"]
    assert "tiny-hunyuanvideo-1.5" not in tabs["Test-time adaptation"]
