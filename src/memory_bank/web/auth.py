"""The token rule: with a token, every request must carry it, as ``Authorization: Bearer``
or as the cookie the login page sets; anything else gets 401. Compared in constant time.

The cookie holds an HMAC of the token, not the token: a stolen cookie does not reveal it
(and changing the token logs every browser out). HttpOnly, SameSite=Strict.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
from urllib.parse import parse_qs, quote

COOKIE = "memorybank_session"
_MAX_FORM_BYTES = 4096


def _session_value(token: str) -> str:
    return hmac.new(token.encode(), b"memorybank web session", hashlib.sha256).hexdigest()


def _cookies(headers: dict[bytes, bytes]) -> dict[str, str]:
    out = {}
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MemoryBank — sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font:15px system-ui,sans-serif;background:#f4f6f8;color:#1d2733;display:grid;
place-items:center;height:100vh;margin:0}}
form{{background:#fff;padding:28px 32px;border-radius:8px;box-shadow:0 1px 4px #0002;width:320px}}
h1{{font-size:18px;margin:0 0 16px}} input{{width:100%;box-sizing:border-box;padding:8px;
margin:6px 0 14px;font:inherit;border:1px solid #c6ced6;border-radius:4px}}
button{{padding:8px 16px;font:inherit;background:#2563eb;color:#fff;border:0;border-radius:4px}}
.error{{color:#b91c1c;margin:0 0 10px}}
</style></head><body>
<form method="post" action="/login">
<h1>MemoryBank dashboard</h1>
{error}<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
</form></body></html>"""


def login_page(error: str = "", next_path: str = "/") -> bytes:
    shown = f'<p class="error">{html.escape(error)}</p>' if error else ""
    return LOGIN_PAGE.format(error=shown, next=html.escape(next_path, quote=True)).encode()


class TokenGate:
    """ASGI middleware: lets a request through only with the token (when one is set)."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token
        self.session = _session_value(token) if token else None

    def allowed(self, headers: dict[bytes, bytes]) -> bool:
        if self.token is None or self.session is None:
            return True  # no token set: everyone may (__call__ does not ask then)
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            return True
        cookie = _cookies(headers).get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.session.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.token is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if path == "/login" and scope["method"] == "POST":
            return await self._login(receive, send)
        if path == "/logout":
            return await _respond(
                send, 303, b"", [(b"location", b"/"), (b"set-cookie", _cookie("", 0))]
            )
        if self.allowed(headers):
            return await self.app(scope, receive, send)
        if path.startswith("/api/") or b"text/html" not in headers.get(b"accept", b""):
            body = json.dumps({"error": "a token is required: Authorization: Bearer TOKEN"})
            return await _respond(
                send,
                401,
                body.encode(),
                [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
            )
        query = scope.get("query_string", b"").decode("latin-1")
        next_path = path + (f"?{query}" if query else "")
        return await _respond(send, 401, login_page(next_path=next_path), _HTML)

    async def _login(self, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > _MAX_FORM_BYTES:
                return await _respond(send, 413, b"form too large", [])
            if not message.get("more_body"):
                break
        form = parse_qs(body.decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        next_path = (form.get("next") or ["/"])[0]
        if not next_path.startswith("/") or next_path.startswith("//"):
            next_path = "/"  # never redirect off this site
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return await _respond(send, 401, login_page("Wrong token.", next_path), _HTML)
        headers = [
            (b"location", quote(next_path, safe="/?&=#%").encode()),
            (b"set-cookie", _cookie(self.session, 30 * 86400)),
        ]
        return await _respond(send, 303, b"", headers)


_HTML = [(b"content-type", b"text/html; charset=utf-8")]


def _cookie(value: str, max_age: int) -> bytes:
    return f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict".encode()


async def _respond(send, status: int, body: bytes, headers: list) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
