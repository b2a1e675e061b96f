"""Gradio tabs, one module each. They wire components to engine calls and hold no logic."""
