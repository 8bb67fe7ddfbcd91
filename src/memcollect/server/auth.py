"""Token auth for every route but /healthz (plain ASGI: the MCP server uses it too)."""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from .answers import error_response

__all__ = ["TokenAuth"]


class TokenAuth:
    """Every request but /healthz needs the token: as a Bearer token, or as the password of
    HTTP Basic, which lets a browser open the dashboard (it asks for it and sends it on)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _authorized(self, header: bytes) -> bool:
        scheme, _, credential = header.partition(b" ")
        scheme = scheme.lower()
        if scheme == b"basic":
            try:
                _, _, credential = base64.b64decode(credential, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                return False
        elif scheme != b"bearer":
            return False
        return hmac.compare_digest(credential.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        if self._authorized(header):
            await self.app(scope, receive, send)
            return
        challenge = 'Basic realm="memcollect"' if scope["path"] == "/" else "Bearer"
        response = error_response(
            401,
            "this server needs a token: send 'Authorization: Bearer <token>' with the value of "
            "its MEMCOLLECT_TOKEN",
            {"WWW-Authenticate": challenge},
        )
        await response(scope, receive, send)
