"""A local Hugging Face Hub-compatible HTTP server for tests (`HF_ENDPOINT=server.url`).

It implements exactly the routes huggingface_hub 2.4 calls to create a model repo, commit files
to it (preupload + NDJSON commit) and download them back (repo info, tree listing, resolve):

    POST /api/repos/create                                   create_repo  (409 when it exists)
    POST /api/validate-yaml                                  create_commit checks README.md's YAML
    POST /api/models/{ns}/{name}/preupload/{rev}             upload modes (always "regular")
    POST /api/models/{ns}/{name}/commit/{rev}                NDJSON: header + file lines -> a commit
    POST /api/models/{ns}/{name}/branch/{branch}             create_branch (from main)
    GET  /api/models/{ns}/{name}[/revision/{rev}]            repo_info / model_info
    GET  /api/models/{ns}/{name}/tree/{rev}[/{path}]         list_repo_tree (snapshot_download)
    HEAD|GET /{ns}/{name}/resolve/{rev}/{path}               hf_hub_download (X-Repo-Commit, ETag)

Every file is answered `uploadMode: "regular"`, so contents arrive base64-encoded inside the
commit; the real Hub sends binaries through LFS/Xet, which needs a Xet CAS server to fake.

Auth is `Authorization: Bearer <token>` against `tokens` ({token: user}): an unknown token gets
401 with the Hub's "Invalid credentials in Authorization header"; writes need the namespace's
user (403 otherwise); private repos are invisible (404 RepoNotFound) to others. Everything that
arrives is recorded in `requests`, `repos` and `yaml_validated` for the tests to check.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    description: str
    parent: str | None
    tree: dict[str, bytes]  # the full tree after this commit
    added: dict[str, bytes]  # what the commit itself brought


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev, rev)
        return self.commits.get(oid)

    def history(self, branch: str = "main") -> list[Commit]:
        """Commits on `branch`, oldest first."""
        out, commit = [], self.resolve(branch)
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out[::-1]


class FakeHub:
    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = dict(tokens or {})
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict] = []  # method, path, status, user (never the token)
        self.yaml_validated: list[str] = []
        self.fail_with: int | None = None  # answer every request with this HTTP status (a broken Hub)
        self.lock = threading.Lock()
        self._counter = 0
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def new_oid(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{seed}-{self._counter}".encode()).hexdigest()

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id, private)
        oid = self.new_oid(repo_id)
        tree = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
        repo.commits[oid] = Commit(oid, "initial commit", "", None, dict(tree), dict(tree))
        repo.branches["main"] = oid
        self.repos[repo_id] = repo
        return repo


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes | dict | list | None = None, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
        self.send_response(status)
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._record["status"] = status

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _user(self) -> tuple[bool, str | None]:
        """(ok, user): ok is False for a token the Hub does not know."""
        auth = self.headers.get("Authorization")
        if not auth:
            return True, None
        token = auth.removeprefix("Bearer ").strip()
        user = self.hub.tokens.get(token)
        return (user is not None), user

    def _handle(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        ok, user = self._user()
        self._record = {"method": self.command, "path": url.path, "user": user, "status": None}
        with self.hub.lock:
            self.hub.requests.append(self._record)
        body = self._body() if self.command == "POST" else b""  # read it even when refusing (keep-alive)
        if self.hub.fail_with is not None:
            return self._error(self.hub.fail_with, "Internal Error")
        if not ok:
            return self._error(401, "Invalid credentials in Authorization header")
        with self.hub.lock:
            return self._route(parts, query, user, body)

    do_GET = do_POST = do_HEAD = _handle

    # ------------------------------------------------------------------ routes
    def _route(self, parts: list[str], query: dict, user: str | None, body: bytes) -> None:
        m = self.command
        if m == "POST" and parts == ["api", "repos", "create"]:
            return self._create(json.loads(body), user)
        if m == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(body))
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            repo = self._readable(repo_id, user)
            if repo is None:
                return None
            if m == "GET" and not rest:
                return self._info(repo, "main")
            if m == "GET" and len(rest) == 2 and rest[0] == "revision":
                return self._info(repo, rest[1])
            if m == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo, rest[1], "/".join(rest[2:]))
            if m == "POST" and len(rest) == 2 and rest[0] in ("preupload", "commit", "branch"):
                if user is None or user != repo_id.split("/")[0]:
                    return self._error(403, f"You don't have the rights to write to {repo_id}")
                if rest[0] == "preupload":
                    return self._preupload(repo, rest[1], json.loads(body))
                if rest[0] == "commit":
                    return self._commit(repo, rest[1], body)
                return self._branch(repo, rest[1], json.loads(body) if body else {})
        if len(parts) >= 5 and parts[2] == "resolve" and m in ("GET", "HEAD"):
            repo = self._readable(f"{parts[0]}/{parts[1]}", user)
            if repo is None:
                return None
            return self._resolve(repo, parts[3], "/".join(parts[4:]))
        return self._error(404, f"no route {m} {self.path}")

    def _readable(self, repo_id: str, user: str | None) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        return repo

    def _create(self, payload: dict, user: str | None) -> None:
        if user is None:
            return self._error(401, "You must be authenticated to create a repo")
        namespace = payload.get("organization") or user
        if namespace != user:
            return self._error(403, f"You don't have the rights to create a model under the namespace \"{namespace}\"")
        if payload.get("type", "model") != "model":
            return self._error(400, "only model repos in this test server")
        repo_id = f"{namespace}/{payload['name']}"
        if repo_id in self.hub.repos:  # the Hub's 409 body names the existing repo's url
            return self._send(409, {"error": "You already created this model repo", "url": f"{self.hub.url}/{repo_id}"},
                              {"X-Error-Message": "You already created this model repo"})
        self.hub.create_repo(repo_id, private=payload.get("visibility") == "private")
        return self._send(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        import yaml

        content = payload.get("content", "")
        self.hub.yaml_validated.append(content)
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as err:
                return self._send(400, {"errors": [{"message": str(err)}], "warnings": []})
        return self._send(200, {"errors": [], "warnings": []})

    def _commit_or_404(self, repo: Repo, rev: str) -> Commit | None:
        commit = repo.resolve(rev)
        if commit is None:
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _info(self, repo: Repo, rev: str) -> None:
        commit = self._commit_or_404(repo, rev)
        if commit is None:
            return None
        return self._send(200, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid, "private": repo.private,
                                "siblings": [{"rfilename": p} for p in sorted(commit.tree)]})

    def _tree(self, repo: Repo, rev: str, prefix: str) -> None:
        commit = self._commit_or_404(repo, rev)
        if commit is None:
            return None
        entries = [{"type": "file", "path": p, "size": len(d), "oid": git_blob_oid(d)}
                   for p, d in sorted(commit.tree.items()) if not prefix or p.startswith(prefix.rstrip("/") + "/")]
        return self._send(200, entries)

    def _preupload(self, repo: Repo, rev: str, payload: dict) -> None:
        commit = repo.resolve(rev)
        tree = commit.tree if commit else {}
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_blob_oid(tree[f["path"]]) if f["path"] in tree else None} for f in payload["files"]]
        return self._send(200, {"files": files, "commitOid": commit.oid if commit else None})

    def _commit(self, repo: Repo, rev: str, body: bytes) -> None:
        if self.headers.get("Content-Type") != "application/x-ndjson":
            return self._error(400, "commit payload must be application/x-ndjson")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "first NDJSON line must be the header")
        header = lines[0]["value"]
        parent = repo.resolve(rev)
        if parent is None or rev not in repo.branches:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        tree, added = dict(parent.tree), {}
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return self._error(400, "file content must be base64")
                added[value["path"]] = tree[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                tree.pop(value["path"], None)
            else:
                return self._error(400, f"unsupported commit operation '{key}' (this server only takes regular files)")
        oid = self.hub.new_oid(repo.repo_id + header.get("summary", ""))
        repo.commits[oid] = Commit(oid, header.get("summary", ""), header.get("description", ""), parent.oid, tree, added)
        repo.branches[rev] = oid
        return self._send(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{oid}",
                                "pullRequestUrl": None})

    def _branch(self, repo: Repo, branch: str, payload: dict) -> None:
        if branch in repo.branches:
            return self._error(409, f"Reference already exists: refs/heads/{branch}")
        start = repo.resolve(payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        return self._send(200, {})

    def _resolve(self, repo: Repo, rev: str, path: str) -> None:
        commit = self._commit_or_404(repo, rev)
        if commit is None:
            return None
        if path not in commit.tree:
            return self._error(404, "Entry not found", "EntryNotFound")
        data = commit.tree[path]
        return self._send(200, data, {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(data)}"',
                                      "Content-Type": "application/octet-stream"})
