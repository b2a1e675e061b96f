"""The presets guide (issue 16, "Guidance"): presets grouped by task, with description and family."""

from engine.preset_guide import TASKS, presets_by_task
from engine.presets import TASK_WORDS, load_preset, presets_for


def test_every_task_lists_the_presets_that_can_do_it_in_the_guides_order():
    groups = presets_by_task()
    assert [g["task"] for g in groups] == ["length_extension", "generate", "tta"]
    assert {task for task, _ in TASKS} == set(TASK_WORDS)  # no task without a heading
    for group in groups:
        names = [p["name"] for p in group["presets"]]
        assert sorted(names) == presets_for(group["task"]) != []
        assert names == sorted(names, key=lambda n: (n.startswith("tiny"), n))  # real models first
        assert group["what"] == TASK_WORDS[group["task"]]
        for p in group["presets"]:
            spec = load_preset(p["name"])
            assert (p["family"], p["description"], p["tiny"]) == (spec["family"], spec["description"],
                                                                   spec["source"] == "tiny")


def test_the_descriptions_carry_the_measured_gpu_needs():
    by_name = {p["name"]: p for g in presets_by_task() for p in g["presets"]}
    assert "16.5 GiB" in by_name["wan2.1-t2v-1.3b"]["description"]  # measured on an H200 (docs/memory.md)
    assert by_name["tiny-wan"]["tiny"] and not by_name["wan2.1-t2v-1.3b"]["tiny"]
    assert "tiny-opensora2" not in {p["name"] for p in presets_by_task()[0]["presets"]}  # TTA only
