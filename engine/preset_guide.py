"""The presets grouped by task, for the app's guide: what each is for and what it needs.

A preset's description states its measured GPU needs where they were measured (docs/memory.md);
the guide shows it as written, with the model family and where the weights come from, so the
guide and the preset files cannot drift apart.
"""

from __future__ import annotations

from .errors import ConfigError
from .presets import TASK_WORDS, load_preset, presets_for

# The order and headings of the guide (each task of engine.presets.TASK_WORDS once).
TASKS = (("length_extension", "Length extension"), ("generate", "Generation"), ("tta", "Test-time adaptation"))


def presets_by_task() -> list[dict]:
    """[{"task", "title", "what" (the task in words), "presets": [{"name", "family", "description",
    "source", "tiny"}]}], tasks in TASKS order; real models first, then the tiny ones, each by name. A preset
    may appear under several tasks."""
    groups = []
    for task, title in TASKS:
        entries = []
        for name in presets_for(task):
            try:
                spec = load_preset(name)
            except ConfigError:  # presets_for already leaves broken files out; one changed since
                continue
            entries.append({"name": name, "family": spec["family"], "description": spec["description"],
                            "source": spec["source"], "tiny": spec["source"] == "tiny"})
        entries.sort(key=lambda e: (e["tiny"], e["name"]))
        groups.append({"task": task, "title": title, "what": TASK_WORDS[task], "presets": entries})
    return groups
