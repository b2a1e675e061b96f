"""Presets tab: the presets grouped by task, each with its family and description (which states the
measured GPU needs where they were measured). Read-only; the grouping is engine.preset_guide's."""

from __future__ import annotations

import gradio as gr

from engine import preset_guide


def _escape(text: str) -> str:
    """Descriptions are plain text: keep Markdown from reading '*' or '_' in them as emphasis."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_")


def group_markdown(group: dict) -> str:
    lines = [f"{len(group['presets'])} presets {group['what']}. *tiny*: random weights built on the CPU in "
             "seconds, for trying the app; the others download their weights from the Hub.", ""]
    for p in group["presets"]:
        weights = "tiny" if p["tiny"] else f"`{p['source']}`"
        lines.append(f"- **{p['name']}** · family `{p['family']}` · weights {weights}  \n"
                     f"  {_escape(p['description']) or '(no description)'}")
    return "\n".join(lines)


def build() -> None:
    with gr.Tab("Presets"):
        gr.Markdown("Which preset to pick for a task, and what it needs. The GPU memory figures were measured "
                    "(docs/memory.md); a preset that says nothing about its needs was not measured yet.")
        for group in preset_guide.presets_by_task():
            with gr.Accordion(f"{group['title']} ({len(group['presets'])})", open=group["task"] == "length_extension",
                              elem_id=f"presets-{group['task']}"):
                gr.Markdown(group_markdown(group))
