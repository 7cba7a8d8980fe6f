"""A fake Hugging Face Hub: a real HTTP server on 127.0.0.1 speaking the part of the Hub's API
that ``huggingface_hub`` 2.4 uses to create a repo, commit files and download them.

Repos live in memory: ``repos[repo_id] = Repo`` with ``branches`` (name -> commit sha) and
``commits`` (sha -> {path: bytes}).  Every request is logged as ``(method, path)`` in ``log``.
Fault modes switch per test: ``fail(status, route)`` answers ``status`` to a route
(``create``, ``preupload``, ``commit``, ``revision``, ``tree``, ``resolve`` or ``None`` for
all); ``hostile[repo_id]`` lists extra file names served in the tree listing (``../evil``);
``token`` set means every request must carry ``Authorization: Bearer <token>``.

Endpoints (URL shapes from huggingface_hub's hf_api.py, _commit_api.py, file_download.py):
  POST /api/repos/create                           -> 200 {"url", "name"} | 409 when it exists
  POST /api/validate-yaml                          -> {"errors": [], "warnings": []}
  POST /api/models/{repo}/preupload/{rev}          -> {"files": [{"path", "uploadMode": "regular", ...}]}
  POST /api/models/{repo}/commit/{rev}[?create_pr=1] NDJSON body -> {"commitUrl", "commitOid", "pullRequestUrl"?}
  POST /api/models/{repo}/branch/{branch}          -> 200 | 409 when it exists (from main or startingPoint)
  GET  /api/models/{repo}[/revision/{rev}]         -> {"id", "sha", "siblings": [{"rfilename"}]} (main when no rev)
  GET  /api/models/{repo}/tree/{rev}?recursive=... -> [{"type": "file", "path", "size", "oid"}]
  HEAD/GET /{repo}/resolve/{rev}/{path}            -> bytes, with X-Repo-Commit, ETag, Content-Length
Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) as the Hub's do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", "create", re.compile(r"/api/repos/create")),
    ("POST", "validate-yaml", re.compile(r"/api/validate-yaml")),
    ("POST", "preupload", re.compile(rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)")),
    ("POST", "commit", re.compile(rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)")),
    ("POST", "branch", re.compile(rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)")),
    ("GET", "revision", re.compile(rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?")),
    ("GET", "tree", re.compile(rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?P<sub>/.*)?")),
    ("HEAD", "resolve", re.compile(rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)")),
    ("GET", "resolve", re.compile(rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)")),
]


def blob_oid(data: bytes) -> str:
    """git's blob id of ``data`` (what the Hub reports as a file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    prs: int = 0


class FakeHub:
    """The server's state; ``url`` is its endpoint (``http://127.0.0.1:<port>``)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str]] = []
        self.commits: list[dict] = []  # every commit received: {"repo", "revision", "paths", "summary"}
        self.faults: list[tuple[str | None, int]] = []
        self.hostile: dict[str, list[str]] = {}
        self.token: str | None = None
        self.auth_seen: list[str | None] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- test helpers
    def fail(self, status: int, route: str | None = None) -> None:
        """Answer ``status`` to every request of ``route`` (None: every request) from now on."""
        self.faults.append((route, status))

    def add(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", private: bool = False) -> str:
        """Commit ``files`` (the whole tree) to ``branch`` of ``repo_id``; returns the commit sha."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo(private=private))
            return self._commit(repo, branch, dict(files), f"add {len(files)} files")

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches.get(revision, revision)]

    def fetched(self) -> list[str]:
        """The repo paths whose content was downloaded (GET .../resolve/...)."""
        out = []
        for method, path in self.log:
            m = ROUTES[-1][2].fullmatch(urlsplit(path).path)
            if method == "GET" and m:
                out.append(unquote(m["file"]))
        return out

    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes], summary: str) -> str:
        sha = hashlib.sha1(json.dumps([summary, len(repo.commits), sorted((p, blob_oid(b)) for p, b in files.items())]).encode()).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        return sha


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

        # ---- plumbing
        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, data, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(data).encode(), headers)

        def _error(self, status: int, code: str | None, message: str) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._json(status, {"error": message}, headers)

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            body = self._body() if method == "POST" else b""
            with hub.lock:
                hub.log.append((method, self.path))
                hub.auth_seen.append(self.headers.get("Authorization"))
            found = [(route, rx.fullmatch(url.path)) for m, route, rx in ROUTES if m == method and rx.fullmatch(url.path)]
            if not found:
                return self._error(404, None, f"no route {method} {url.path}")
            route, match = found[0]
            for where, status in hub.faults:
                if where is None or where == route:
                    return self._error(status, None, f"fault {status}")
            if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._error(401, None, "Invalid credentials in Authorization header")
            groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            with hub.lock:
                getattr(self, "_" + route.replace("-", "_"))(groups, parse_qs(url.query), body)

        def _repo(self, groups: dict) -> Repo | None:
            repo = hub.repos.get(groups["repo"])
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            return repo

        def _sha(self, repo: Repo, rev: str) -> str | None:
            sha = repo.branches.get(rev, rev if rev in repo.commits else None)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return sha

        # ---- routes
        def _create(self, groups, query, body) -> None:
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            if repo_id in hub.repos:
                return self._json(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
            repo = hub.repos[repo_id] = Repo(private=data.get("visibility") == "private" or bool(data.get("private")))
            hub._commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit")
            self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _validate_yaml(self, groups, query, body) -> None:
            self._json(200, {"errors": [], "warnings": []})

        def _preupload(self, groups, query, body) -> None:
            if self._repo(groups) is None:
                return
            files = json.loads(body)["files"]
            self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]})

        def _commit(self, groups, query, body) -> None:
            repo = self._repo(groups)
            if repo is None:
                return
            rev = groups["rev"]
            sha = self._sha(repo, rev)
            if sha is None:
                return
            files = dict(repo.commits[sha])
            summary = ""
            for line in body.splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary = value.get("summary", "")
                elif item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    return self._error(400, None, f"unsupported commit line {item['key']}")
            branch = rev
            pr_url = None
            if query.get("create_pr") == ["1"]:
                repo.prs += 1
                branch = f"refs/pr/{repo.prs}"
                pr_url = f"{hub.url}/{groups['repo']}/discussions/{repo.prs}"
            oid = hub._commit(repo, branch, files, summary)
            hub.commits.append({"repo": groups["repo"], "revision": branch, "paths": sorted(files), "summary": summary})
            answer = {"commitUrl": f"{hub.url}/{groups['repo']}/commit/{oid}", "commitOid": oid}
            if pr_url:
                answer["pullRequestUrl"] = pr_url
            self._json(200, answer)

        def _branch(self, groups, query, body) -> None:
            repo = self._repo(groups)
            if repo is None:
                return
            if groups["branch"] in repo.branches:
                return self._error(409, None, "Reference already exists")
            start = self._sha(repo, (json.loads(body or b"{}") or {}).get("startingPoint") or "main")
            if start is None:
                return
            repo.branches[groups["branch"]] = start
            self._json(200, {})

        def _revision(self, groups, query, body) -> None:
            repo = self._repo(groups)
            sha = repo and self._sha(repo, groups.get("rev", "main"))
            if sha is None:
                return
            self._json(200, {"id": groups["repo"], "modelId": groups["repo"], "sha": sha, "private": repo.private,
                             "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha])]})

        def _tree(self, groups, query, body) -> None:
            repo = self._repo(groups)
            sha = repo and self._sha(repo, groups["rev"])
            if sha is None:
                return
            files = repo.commits[sha]
            entries = [{"type": "file", "oid": blob_oid(b), "size": len(b), "path": p} for p, b in sorted(files.items())]
            entries += [{"type": "file", "oid": blob_oid(b"x"), "size": 1, "path": p} for p in hub.hostile.get(groups["repo"], [])]
            self._json(200, entries)

        def _resolve(self, groups, query, body) -> None:
            repo = self._repo(groups)
            sha = repo and self._sha(repo, groups["rev"])
            if sha is None:
                return
            files = repo.commits[sha]
            name = groups["file"]
            data = files.get(name, b"x" if name in hub.hostile.get(groups["repo"], []) else None)
            if data is None:
                return self._error(404, "EntryNotFound", f"{name} does not exist on {groups['rev']}")
            self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{blob_oid(data)}"'}, ctype="application/octet-stream")

    return Handler
