"""Throttling on the localhost S3 endpoint of :mod:`fixtures_servers` (``503 SlowDown`` answers)."""

from __future__ import annotations

from typing import Any, Self


class Throttle:
    """While active, the S3 endpoint answers ``503 SlowDown`` to the first ``times`` requests for
    ``path`` (S3's throttling answer)."""

    BODY = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    def __init__(self, server: Any, path: str, times: int) -> None:
        self.server, self.path, self.left, self.refused = server, path, times, 0

    def __enter__(self) -> Self:
        httpd = self.server._httpd
        self.app = httpd.app

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("PATH_INFO") == self.path and self.left > 0:
                self.left -= 1
                self.refused += 1
                body = b"" if environ["REQUEST_METHOD"] == "HEAD" else self.BODY  # HEAD answers carry no body
                start_response(
                    "503 Slow Down", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
                )
                return [body]
            return self.app(environ, start_response)

        httpd.app = app
        return self

    def __exit__(self, *exc: object) -> None:
        self.server._httpd.app = self.app
