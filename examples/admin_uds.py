"""A unix-socket admin endpoint that answers only callers whose uid is allowed (seed 004).

The server reads the caller's credentials from the kernel (Linux ``SO_PEERCRED``), which
asgi-hijack puts in every request's scope as ``scope["extensions"]["http.connection"]
["peer_credentials"] == (pid, uid, gid)``. No hijack needed, no monkeypatching.

Run it (only the user running the server is allowed by default)::

    uvicorn examples.admin_uds:app --uds /tmp/admin.sock --http asgi_hijack:HijackProtocol
    curl --unix-socket /tmp/admin.sock http://admin/status

Allow more users with ``ADMIN_UIDS=0,1000``. Over TCP there are no peer credentials, so
every request is refused.
"""

from __future__ import annotations

import json
import os
from typing import Any

from asgi_hijack.lifecycle import CONNECTION_EXTENSION


def allowed_uids() -> frozenset[int]:
    """Uids from ``ADMIN_UIDS`` (comma-separated), or the server's own uid."""
    raw = os.environ.get("ADMIN_UIDS", "")
    return frozenset(int(uid) for uid in raw.split(",") if uid.strip()) or frozenset({os.getuid()})


class AdminApp:
    """ASGI app: 200 with the caller's identity for allowed uids, 403 otherwise."""

    def __init__(self, allow: frozenset[int] | None = None) -> None:
        self.allow = allowed_uids() if allow is None else allow

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        connection = scope.get("extensions", {}).get(CONNECTION_EXTENSION, {})
        credentials = connection.get("peer_credentials")
        if credentials is None or credentials[1] not in self.allow:
            status, body = 403, {"error": "forbidden: caller uid is not allowed", "peer_credentials": credentials}
        else:
            pid, uid, gid = credentials
            status, body = 200, {"status": "ok", "pid": pid, "uid": uid, "gid": gid, "connection": connection["id"]}
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


app = AdminApp()
