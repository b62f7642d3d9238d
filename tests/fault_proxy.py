"""An HTTP proxy on 127.0.0.1 that puts a misbehaving network between the real storage clients
(gcsfs, google-cloud-storage, TensorStore) and the tests' GCS server (fake-gcs-server).

Requests pass through unchanged unless a :class:`Fault` matches them: a method (or any) and a
regular expression searched in the request's object name (the unquoted path and query, and the
first kilobytes of an upload's body, where a multipart upload names its object). A fault applies
to the first ``times`` matching requests, or, with ``after``, to every match from the ``after``-th
on. What it does:

* ``status``: answers 503, 429 or 500 without passing the request on;
* ``reset``: closes the connection with a TCP reset before answering;
* ``stall``: waits ``seconds`` before passing the request on (or, with ``forward=False``, before
  resetting the connection: a request that never gets an answer in time);
* ``cut``: passes the request on and sends the answer's headers and half its body, then closes.

:meth:`Proxy.down` makes the server unreachable (connections refused, open ones reset), as if it
had gone away; :meth:`Proxy.up` brings it back on the same port. ``log`` records what went
through, for assertions on what a client did.
"""

from __future__ import annotations

import dataclasses
import http.client
import re
import socket
import struct
import threading
import urllib.parse

import runs

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclasses.dataclass
class Fault:
    kind: str  # status | reset | stall | cut
    pattern: str = ""
    method: str | None = None
    times: int | None = 1  # the first N matches; None with `after`: every match from then on
    after: int = 0  # matches let through before the fault starts
    code: int = 503
    seconds: float = 0.0
    forward: bool = True  # stall: then pass the request on (else reset)
    matched: int = 0
    applied: int = 0

    def take(self, method: str, target: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        if not re.search(self.pattern, target):
            return False
        self.matched += 1
        if self.matched <= self.after:
            return False
        if self.times is not None and self.applied >= self.times:
            return False
        self.applied += 1
        return True


class Proxy:
    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.port = runs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, str]] = []  # (method, target, what happened)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._closed = threading.Event()  # wakes the stalls
        self.up()

    # ---- control

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test", "GOOGLE_CLOUD_PROJECT": "test", "NO_GCE_CHECK": "true"}

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.log.clear()

    def up(self) -> None:
        if self._listener is not None:
            return
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        """The server is gone: new connections are refused, open ones reset."""
        s, self._listener = self._listener, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept(), which close alone would not
            except OSError:
                pass
            s.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            _reset(c)

    def close(self) -> None:
        self._closed.set()
        self.down()

    # ---- the proxy

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:
                _reset(conn)
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        upstream = None
        try:
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                name = urllib.parse.unquote(target) + " " + body[:4096].decode("latin-1")
                with self._lock:
                    fault = next((f for f in self.faults if f.take(method, name)), None)
                    self.log.append((method, urllib.parse.unquote(target), fault.kind if fault else "ok"))
                if fault is not None and fault.kind == "status":
                    _send_status(conn, fault.code)
                    continue
                if fault is not None and fault.kind == "reset":
                    _reset(conn)
                    return
                if fault is not None and fault.kind == "stall":
                    self._closed.wait(fault.seconds)
                    if not fault.forward:
                        _reset(conn)
                        return
                if upstream is None:
                    upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
                fwd = {k: v for k, v in headers if k.lower() not in _HOP and k.lower() != "content-length"}
                upstream.request(method, target, body=body, headers=fwd)
                resp = upstream.getresponse()
                data = resp.read()
                out = [(k, v) for k, v in resp.getheaders()
                       if k.lower() not in _HOP and k.lower() != "content-length"]
                here = f"{self.upstream.scheme}://{self.upstream.netloc}"
                out = [(k, v.replace(here, self.url) if k.lower() == "location" else v) for k, v in out]
                head = [f"HTTP/1.1 {resp.status} {resp.reason}"] + [f"{k}: {v}" for k, v in out]
                head.append(f"Content-Length: {len(data)}")
                conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                if fault is not None and fault.kind == "cut":
                    conn.sendall(data[: len(data) // 2])
                    _reset(conn)
                    return
                conn.sendall(data)
        except OSError:
            _reset(conn)
        finally:
            with self._lock:
                self._conns.discard(conn)
            if upstream is not None:
                upstream.close()
            try:
                conn.close()
            except OSError:
                pass


def _read_request(reader):
    line = reader.readline(65537)
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = []
    while True:
        h = reader.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        k, v = h.decode("latin-1").split(":", 1)
        headers.append((k.strip(), v.strip()))
    lower = {k.lower(): v for k, v in headers}
    if lower.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(reader.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            parts.append(reader.read(size))
            reader.readline()
        body = b"".join(parts)
    else:
        body = reader.read(int(lower.get("content-length", 0) or 0))
    return method, target, headers, body


def _send_status(conn: socket.socket, code: int) -> None:
    reason = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}.get(code, "Error")
    body = ('{"error": {"code": %d, "message": "%s (injected by the test proxy)"}}' % (code, reason)).encode()
    conn.sendall((f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)


def _reset(conn: socket.socket) -> None:
    """Closes with a TCP reset; also wakes a thread of this proxy blocked reading from it."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass
