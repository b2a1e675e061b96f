"""Hub tab: push a run's adapter (with its model card) to the Hub; pull one by id.

API: /hub_push, /hub_pull. The token comes from the field, HF_TOKEN, the cached login, or
(on a Space) the "Sign in with Hugging Face" button; it is never shown or written anywhere.
"""

from __future__ import annotations

import gradio as gr

from engine import api

from .errors import user_errors_as_messages


@user_errors_as_messages
def hub_push(adapter: str, repo_id: str, token: str = "", public: bool = False,
             oauth_token: gr.OAuthToken | None = None, progress=gr.Progress()):
    token = (token or "").strip() or (oauth_token.token if oauth_token is not None else None)
    result = api.hub_push(adapter, repo_id, token=token, public=public,
                          progress=lambda fraction, message: progress(fraction, desc=message))
    return result, f"Pushed to [{result['repo_id']}]({result['repo_url']}) · commit `{result['commit_oid'][:10]}`"


@user_errors_as_messages
def hub_pull(ref: str, token: str = "", oauth_token: gr.OAuthToken | None = None):
    token = (token or "").strip() or (oauth_token.token if oauth_token is not None else None)
    folder = api.pull_adapter(ref, token=token)
    return {"adapter": str(folder), "files": sorted(p.name for p in folder.iterdir())}


def build() -> None:
    with gr.Tab("Hub") as tab:
        gr.Markdown("Share an adapter: the LoRA (diffusers + ComfyUI formats), its training config and a model card "
                    "with the loss plot and a sample video. Repos are private unless you tick *public*.")
        if api.on_spaces():
            gr.LoginButton()
        with gr.Row():
            with gr.Column():
                adapter = gr.Dropdown(choices=api.finished_adapters(), value="", allow_custom_value=True,
                                      label="Adapter (a finished run, or a folder under the data root)")
                repo_id = gr.Textbox(label="Repo id", placeholder="your-name/radial-lora")
                token = gr.Textbox(label="Token (optional: else HF_TOKEN, your login, or the sign-in button)",
                                   type="password", value="")
                public = gr.Checkbox(False, label="Public")
                push = gr.Button("Push", variant="primary")
                refresh = gr.Button("Refresh adapters", size="sm")
            with gr.Column():
                message = gr.Markdown()
                result = gr.JSON(label="Push result")
        with gr.Row():
            ref = gr.Textbox(label="Pull an adapter by Hub id (user/repo or user/repo@revision)", value="")
            pull = gr.Button("Pull")
        pulled = gr.JSON(label="Pulled adapter")
        push.click(hub_push, [adapter, repo_id, token, public], [result, message], api_name="hub_push")
        pull.click(hub_pull, [ref, token], pulled, api_name="hub_pull")
        refresh.click(lambda: gr.Dropdown(choices=api.finished_adapters()), None, adapter, api_name=False)
        # Runs that finished since the page loaded are offered as soon as the tab opens.
        tab.select(lambda: gr.Dropdown(choices=api.finished_adapters()), None, adapter, api_name=False)
