"""``HttpToolsHijackProtocol``: uvicorn's httptools protocol with the ``http.hijack`` extension."""

from __future__ import annotations

import re

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .core import HijackServerMixin

__all__ = ["HttpToolsHijackProtocol"]

_AUTHORITY_CONNECT = re.compile(rb"CONNECT ([^/\s][^\s]*) ")


class HttpToolsHijackProtocol(HijackServerMixin, HttpToolsProtocol):
    """HTTP/1.x over httptools, hijackable. Use with ``uvicorn --http asgi_hijack:HttpToolsHijackProtocol``.

    Differences from uvicorn's class, so that it behaves exactly like the h11 one:
    authority-form ``CONNECT host:port`` reaches the app, and the body of an
    Upgrade/CONNECT request (which llhttp skips) is delivered to ``receive()``.
    """

    def _hj_upgrade_body_skipped(self) -> bool:
        return True

    def _should_upgrade(self) -> bool:
        # uvicorn asks three times per Upgrade or CONNECT request (headers complete, message
        # complete, and when llhttp stops), and scans every header each time: scan once. (The
        # memo keeps the request's headers; such a request closes the connection unless hijacked.)
        conn = self._hj
        memo = conn.upgrade_memo
        if memo is None or memo[0] is not self.headers:
            memo = conn.upgrade_memo = (self.headers, super()._should_upgrade())
        return memo[1]

    def _hj_feed_head(self, head: bytes) -> None:
        match = _AUTHORITY_CONNECT.match(head)
        if match is None:
            super()._hj_feed_head(head)
            return
        # Authority-form target (RFC 9112 3.2.3), which httptools cannot parse as a URL:
        # parse the head with "/" and put the target in the scope verbatim, as h11 does.
        target = match.group(1)
        before = self.cycle
        super()._hj_feed_head(b"CONNECT /" + head[match.end(1) :])
        if self.cycle is not before:
            self.scope["path"] = self.root_path + target.decode("latin-1")
            self.scope["raw_path"] = self.root_path.encode("ascii") + target
