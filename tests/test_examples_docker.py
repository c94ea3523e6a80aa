"""examples/docker_attach.py: the Docker SDK for Python attaches to it as to a daemon.

``docker.APIClient(...).attach_socket(...)`` does the request and reads the ``101
UPGRADED`` head; ``docker.utils.socket.frames_iter`` demultiplexes the output. Over TCP
and over a unix socket. The SDK's reads wait without a timeout, so every client
exchange runs in a thread that must finish within :data:`TIMEOUT`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker  # type: ignore[import-untyped]  # no stubs shipped
import pytest
from docker.utils.socket import consume_socket_output, demux_adaptor, frames_iter, next_frame_header, read_exactly  # type: ignore[import-untyped]

from asgi_hijack.testing import RunningServer
from examples.docker_attach import app
from tests.test_examples_raw_tcp import ExampleProcess, uvicorn_example

TIMEOUT = 10.0
ALL = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
T = TypeVar("T")


def bounded(func: Callable[[], T]) -> T:
    """Run a blocking client exchange; fail (not hang) if it takes longer than TIMEOUT."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(func())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), f"the Docker client exchange did not finish within {TIMEOUT}s"
    if error:
        raise error[0]
    return result[0]


@pytest.fixture(params=["tcp", "unix"])
def api(request: pytest.FixtureRequest, hijack_server: Any, tmp_path: Path) -> Iterator[docker.APIClient]:
    """A Docker API client for the example served over TCP or a unix socket."""
    if request.param == "tcp":
        server: RunningServer = hijack_server(app)
        base_url = f"tcp://127.0.0.1:{server.port}"
    else:
        path = tmp_path / "docker.sock"
        hijack_server(app, uds=str(path))
        base_url = f"unix://{path}"
    client = docker.APIClient(base_url=base_url, version="1.41", timeout=TIMEOUT)
    yield client
    client.close()


def close_attach(sock: Any) -> None:
    """Close what ``attach_socket`` returned: its HTTP response first (on Python 3.13 a response
    collected after its socket closed raises from ``__del__``), then the socket."""
    raw = sock._sock  # closing the response closes this SocketIO, not the socket under it
    sock._response.close()
    raw.close()


def attach(api: docker.APIClient, container: str, **params: int) -> Any:
    sock = api.attach_socket(container, params={**ALL, **params})
    assert sock._response.status_code == 101
    assert sock._response.headers["Content-Type"] == "application/vnd.docker.raw-stream"
    assert sock._response.headers["Upgrade"] == "tcp"
    return sock


def read_frame(sock: Any) -> tuple[int, bytes]:
    stream, size = next_frame_header(sock)
    return stream, read_exactly(sock, size)


def test_stdin_and_stdout_stream_both_ways_then_half_close(api: docker.APIClient) -> None:
    def exchange() -> list[tuple[int, bytes]]:
        sock = attach(api, "cat")
        try:
            sock._sock.sendall(b"hello\n")
            first = read_frame(sock)  # the echo arrives while the connection stays open
            sock._sock.sendall(b"again\n")
            second = read_frame(sock)
            sock._sock.shutdown(socket.SHUT_WR)  # cat sees the end of stdin and exits
            return [first, second, *frames_iter(sock, False)]
        finally:
            close_attach(sock)

    assert bounded(exchange) == [(1, b"hello\n"), (1, b"again\n")]


def test_half_close_reaches_the_process_and_its_output_still_comes_back(api: docker.APIClient) -> None:
    def exchange() -> list[tuple[int, bytes]]:
        sock = attach(api, "wc")
        try:
            sock._sock.sendall(b"x" * 100_000)
            sock._sock.shutdown(socket.SHUT_WR)  # wc -c prints only at the end of its stdin
            return list(frames_iter(sock, False))
        finally:
            close_attach(sock)

    assert bounded(exchange) == [(1, b"100000\n")]


def test_stdout_and_stderr_are_multiplexed(api: docker.APIClient) -> None:
    def exchange(**params: int) -> tuple[bytes | None, bytes | None]:
        sock = attach(api, "shout", **params)
        try:
            sock._sock.sendall(b"hello\n")
            sock._sock.shutdown(socket.SHUT_WR)
            output: tuple[bytes | None, bytes | None] = consume_socket_output(
                (demux_adaptor(*frame) for frame in frames_iter(sock, False)), demux=True
            )
            return output
        finally:
            close_attach(sock)

    assert bounded(exchange) == (b"HELLO\n", b"stdin closed\n")
    assert bounded(lambda: exchange(stderr=0)) == (b"HELLO\n", None)


def test_unknown_container_is_a_docker_not_found(api: docker.APIClient) -> None:
    with pytest.raises(docker.errors.NotFound, match="No such container: nope"):
        bounded(lambda: api.attach_socket("nope", params=ALL))


def test_sigterm_stops_the_process_and_sends_its_last_output() -> None:
    with ExampleProcess(uvicorn_example("examples.docker_attach:app")) as server:
        host, port = server.address
        api = docker.APIClient(base_url=f"tcp://{host}:{port}", version="1.41", timeout=TIMEOUT)

        def exchange() -> list[tuple[int, bytes]]:
            sock = attach(api, "service")
            try:
                sock._sock.sendall(b"hello\n")
                first = read_frame(sock)
                server.sigterm()  # the process gets SIGTERM, says "stopped" on stderr and exits
                return [first, *frames_iter(sock, False)]
            finally:
                close_attach(sock)

        try:
            assert bounded(exchange) == [(1, b"hello\n"), (2, b"stopped\n")]
        finally:
            api.close()
        server.assert_exits()
