"""The checks every request passes before a route sees it (a plain ASGI middleware, in this order):

1. Host: only the names we serve (loopback, the bound host, --allow-host). A page on evil.example whose
   DNS answers 127.0.0.1 still sends `Host: evil.example` and is refused (DNS rebinding).
2. Token (when set): `Authorization: Bearer T`, or the cookie that opening `/?token=T` sets (so the page
   and its EventSource work); compared in constant time. 401 otherwise.
3. Origin: a state-changing request from a browser must come from one of the same names (403).
4. JSON only: a POST with a body must be `application/json` (415); this also rules out the "simple"
   cross-site form posts that skip CORS preflight.
5. Body size: a Content-Length over the limit is refused at once, a streamed body once it passes it (413).
"""
from __future__ import annotations

import hmac
import json
from urllib.parse import parse_qs, urlsplit

COOKIE = "openimagen_token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8765
        return value[: value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    def __init__(self, app, settings):
        self.app, self.settings = app, settings
        self.names = settings.host_names()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope["method"]
        host = _host_name(headers.get("host", ""))
        if None not in self.names and host not in self.names:
            return await _error(send, 400, "bad_host", f"Host {host!r} is not served here (DNS rebinding guard); "
                                                       "use http://127.0.0.1:PORT/ or start with --allow-host NAME")
        set_cookie = None
        if self.settings.token:
            got = _token(headers, scope.get("query_string", b""))
            if got is None or not hmac.compare_digest(got.encode(), self.settings.token.encode()):
                return await _error(send, 401, "unauthorized", "missing or wrong token: send 'Authorization: "
                                    "Bearer TOKEN' (or open the page once as /?token=TOKEN)",
                                    extra=[(b"www-authenticate", b"Bearer")])
            if "token" in parse_qs(scope.get("query_string", b"").decode("latin-1")):
                set_cookie = f"{COOKIE}={got}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")
        origin = headers.get("origin")
        if method not in SAFE_METHODS and origin:  # "null" (sandboxed frames, file:) counts as foreign too
            o = (urlsplit(origin).hostname or "") if origin != "null" else "null"
            o = f"[{o}]" if ":" in o else o
            if None not in self.names and o not in self.names and o != host:
                return await _error(send, 403, "bad_origin", f"requests from {origin} are not allowed")
        length = headers.get("content-length")
        has_body = (length not in (None, "0")) or "chunked" in headers.get("transfer-encoding", "")
        if method in ("POST", "PUT", "PATCH") and has_body:
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return await _error(send, 415, "unsupported_media_type",
                                    f"send JSON (Content-Type: application/json), got {ctype or 'no content type'!r}")
        limit = self.settings.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return await _error(send, 413, "body_too_large", f"the body is {length} bytes; the limit is {limit}")

        state = {"seen": 0, "started": False, "refused": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit and not state["refused"]:
                    # Answer now and tell the app the client left: frameworks turn exceptions raised
                    # while reading the body into their own 400, which would hide the reason.
                    state["refused"] = True
                    if not state["started"]:
                        await _error(send, 413, "body_too_large", f"the body passed the limit of {limit} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def marked_send(message):
            if state["refused"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
                if set_cookie:
                    message = dict(message, headers=[*message.get("headers", []), (b"set-cookie", set_cookie)])
            await send(message)

        try:
            await self.app(scope, counted_receive, marked_send)
        except Exception:
            if not state["refused"]:
                raise


def _token(headers: dict, query: bytes) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    q = parse_qs(query.decode("latin-1")).get("token")
    if q:
        return q[0]
    for part in headers.get("cookie", "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == COOKIE:
            return v
    return None


async def _error(send, status: int, code: str, message: str, extra=()):
    body = json.dumps({"error": code, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})
