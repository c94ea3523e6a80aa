"""uvicorn with a hijack protocol in a process of its own, so that its file descriptors can be counted.

``python -m soak.server --parser h11`` binds ``127.0.0.1`` on an ephemeral port, prints
``listening PORT`` on stdout and serves :mod:`soak.app` (or ``--app``) until a signal.
:class:`ServerProcess` starts one from a test or from the soak run and reads
``/proc/PID/fd``: the same directory the server sees as ``/proc/self/fd``, read from
outside so that counting does not itself open a connection to the server.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = {
    "h11": "asgi_hijack:H11HijackProtocol",
    "httptools": "asgi_hijack:HttpToolsHijackProtocol",
    "zttp": "asgi_hijack:ZttpHijackProtocol",
}
STDERR_PROBLEMS = ("Traceback", "Task was destroyed", "was never awaited", "Exception in", "ResourceWarning")
"""Lines that must never appear in the server's stderr."""


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parser", choices=sorted(PROTOCOLS), default="httptools")
    parser.add_argument("--app", default="soak.app:app")
    parser.add_argument("--loop", default="asyncio")
    parser.add_argument("--grace", type=float, default=None, help="--timeout-graceful-shutdown")
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        args.app,
        http=PROTOCOLS[args.parser],
        loop=args.loop,
        lifespan="off",
        log_level="warning",
        backlog=4096,
        timeout_graceful_shutdown=None if args.grace is None else int(args.grace),
    )
    print(f"listening {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def count_fds(pid: int) -> int:
    """Open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class ServerProcess:
    """``with ServerProcess("h11") as server:`` -- a :func:`main` subprocess; ``server.port``, ``server.fds()``."""

    def __init__(
        self,
        parser: str,
        *,
        grace: float | None = None,
        loop: str = "asyncio",
        app: str = "soak.app:app",
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = [sys.executable, "-W", "always::ResourceWarning", "-m", "soak.server", "--parser", parser]
        self.args += ["--loop", loop, "--app", app]
        if grace is not None:
            self.args += ["--grace", str(grace)]
        self.env = env or {}
        self.port = 0
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in __exit__
        self._stderr_text: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ServerProcess:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, **self.env}
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("listening "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"server did not start: {line!r} {self.stderr()}")
        self.port = int(line.split()[1])
        self._wait_accepting()
        return self

    def _wait_accepting(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := sock.recv(4096):
                        data += chunk
                    if data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                raise RuntimeError(f"server not serving: {self.stderr()}")
            time.sleep(0.05)

    def fds(self) -> int:
        return count_fds(self.pid)

    def wait_fds(self, target: int, timeout: float = 15.0) -> int:
        """Poll until the server holds ``target`` descriptors (or ``timeout``); return the last count."""
        deadline = time.monotonic() + timeout
        count = self.fds()
        while count != target and time.monotonic() < deadline:
            time.sleep(0.05)
            count = self.fds()
        return count

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        if self._stderr_text is not None:
            return self._stderr_text
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def problems(self) -> list[str]:
        """Lines of the server's stderr that show an error, a leak or a lost task."""
        return [line for line in self.stderr().splitlines() if any(bad in line for bad in STDERR_PROBLEMS)]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(30)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        self._stderr_text = self.stderr()
        self._stderr.close()


if __name__ == "__main__":
    main()
