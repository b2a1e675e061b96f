"""What the app serves from disk, and how: only media and LoRA files from its own folders, never as a page.

Gradio serves files under `allowed_paths` (the runs and outputs folders) and its own upload cache
through `/gradio_api/file=<path>`. This middleware sits in front of that route:
- in the runs and outputs folders only videos, images and LoRA files are served
  (`SERVED_SUFFIXES`); run bookkeeping (`config.json`, `job.log`, `rng.pt`, ...), other users'
  uploads (`runs/_inputs`) and prepared datasets (`runs/_datasets`) answer 404;
- every file response gets `X-Content-Type-Options: nosniff` and `Content-Security-Policy:
  sandbox`, and anything that is not a video, image or audio type is sent as an attachment of
  type `application/octet-stream`, so no served file can render as a page of the app's origin.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

SERVED_SUFFIXES = {".mp4", ".webm", ".mkv", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".safetensors"}
PRIVATE_RUN_FOLDERS = {"_inputs", "_datasets"}
INLINE_TYPES = ("video/", "image/", "audio/")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def allowed(target: str, runs: Path, outputs: Path) -> bool:
    """Whether a `file=` target may be served (targets outside our folders are Gradio's to judge)."""
    if target.startswith(("http://", "https://")):
        return True
    path = Path(os.path.realpath(target))
    runs, outputs = Path(os.path.realpath(runs)), Path(os.path.realpath(outputs))
    for root in (runs, outputs):
        if _inside(path, root):
            rel = path.relative_to(root).parts
            if root == runs and rel and rel[0] in PRIVATE_RUN_FOLDERS:
                return False
            return path.suffix.lower() in SERVED_SUFFIXES
    return True


class ServedFiles:
    """ASGI middleware applying the policy above to Gradio's file routes."""

    def __init__(self, app, roots):
        self.app, self.roots = app, roots  # roots(): (runs folder, outputs folder)

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if "/file=" not in path:
            return await self.app(scope, receive, send)
        if not allowed(unquote(path.split("/file=", 1)[1]), *self.roots()):
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain"), (b"x-content-type-options", b"nosniff")]})
            return await send({"type": "http.response.body", "body": b"Not found"})

        async def guarded(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in
                           (b"x-content-type-options", b"content-security-policy")]
                ctype = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")
                if not ctype.startswith(INLINE_TYPES):
                    headers = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-disposition")]
                    headers += [(b"content-type", b"application/octet-stream"), (b"content-disposition", b"attachment")]
                headers += [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", b"sandbox")]
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, guarded)
