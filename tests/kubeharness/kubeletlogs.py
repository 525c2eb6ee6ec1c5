"""The kubelet's container-log endpoint, served by the node agent: `kubectl logs` and pods/log.

The API server answers ``GET /api/v1/namespaces/NS/pods/POD/log`` by calling the Pod's kubelet at
``https://<node InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>/containerLogs/NS/POD/C``
and streaming the answer back. The node agent serves that path from each container's output file,
so `kubectl logs [-f]` and the kubernetes client's ``read_namespaced_pod_log`` work unchanged.

Like a real kubelet it speaks TLS (a throwaway self-signed certificate: the API server verifies
kubelets only when given --kubelet-certificate-authority, which the harness does not set). It
does not authenticate its callers: it listens on loopback only, and the same files are readable
by anyone on this machine anyway. Supported: ``follow`` (until the container's process ends),
``tailLines``, ``limitBytes``. A container's output file holds all its restarts in sequence, so
``previous`` is refused, and ``timestamps`` and ``sinceSeconds`` are ignored.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlparse

from .certs import self_signed_pair

if TYPE_CHECKING:
    from .podrun import ContainerRun

log = logging.getLogger("kubeharness.nodeagent")

PATH = re.compile(r"^/containerLogs/([^/]+)/([^/]+)/([^/]+)$")
POLL = 0.2  # seconds between looks at a followed file
CHUNK = 64 * 1024

# (namespace, pod, container) -> (the running container or None, its output file or None)
Lookup = Callable[[str, str, str], tuple["ContainerRun | None", "Path | None"]]


class LogServer:
    def __init__(self, lookup: Lookup, cert_dir: Path, node_name: str, host: str = "127.0.0.1"):
        self.lookup = lookup
        self.cert_dir = cert_dir
        self.node_name = node_name
        self.host = host  # the Node's InternalIP: where the API server calls it
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return self.httpd.server_address[1]

    def start(self) -> LogServer:
        pair = self_signed_pair(self.cert_dir, "kubelet",
                                sorted({self.host, "127.0.0.1", "localhost", self.node_name}))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pair.cert, pair.key)
        lookup = self.lookup

        class Handler(_Handler):
            find = staticmethod(lookup)

        self.httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, name="kubelet-logs",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


class _Handler(BaseHTTPRequestHandler):
    find: Lookup

    def log_message(self, fmt: str, *args) -> None:
        log.debug("kubelet logs: " + fmt, *args)

    def _error(self, code: int, message: str) -> None:
        body = message.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        m = PATH.match(url.path)
        if not m:
            self._error(404, f"not found: {url.path} (this node serves /containerLogs only)")
            return
        ns, pod, name = m.groups()
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if query.get("previous") == "true":
            self._error(400, f'previous terminated container "{name}" in pod "{pod}" not found '
                             "(the kubeharness node keeps one output file per container)")
            return
        container, path = self.find(ns, pod, name)
        if path is None or not path.exists():
            if container is not None:
                reason = next(iter(container.state.get("waiting", {}).values()), "")
                self._error(400, f'container "{name}" in pod "{pod}" is waiting to start: '
                                 f"{reason or 'ContainerCreating'}")
            else:
                self._error(404, f'container "{name}" in pod "{pod}" not found on this node')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        # the client may go away first (an interrupted `kubectl logs -f`)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self._stream(path, container, query)

    def _stream(self, path: Path, container: ContainerRun | None, query: dict[str, str]) -> None:
        limit = int(query["limitBytes"]) if query.get("limitBytes") else None
        proc = container.proc if container is not None else None
        follow = query.get("follow") == "true" and proc is not None and proc.poll() is None
        with open(path, "rb") as fh:
            if query.get("tailLines"):
                fh.seek(_tail_offset(path, int(query["tailLines"])))
            while True:
                chunk = fh.read(CHUNK if limit is None else min(CHUNK, limit))
                if chunk:
                    self.wfile.write(chunk)
                    if limit is not None:
                        limit -= len(chunk)
                        if limit <= 0:
                            return
                    continue
                # At the end of the file: done, unless following a process that still runs.
                # Its last output is read once more after it ended.
                if not follow:
                    return
                if proc.poll() is not None:
                    follow = False
                    continue
                time.sleep(POLL)


def _tail_offset(path: Path, lines: int) -> int:
    """Where the last `lines` lines of the file start."""
    data = path.read_bytes()
    if lines <= 0:
        return len(data)
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    pos = end
    for _ in range(lines):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return 0
    return pos + 1
