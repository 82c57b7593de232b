"""``self.client`` of a Locust user: requests' API (Locust's ``HttpSession`` and
``FastHttpSession``), sent through LoadPilot's engine client, which keeps the time.

As under Locust, a request that gets no response does not raise: the response has status 0
and its ``error`` (the engine has counted the error already).
"""

from __future__ import annotations

import datetime
import json as _json
import time
import traceback
import urllib.parse
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loadpilot.errors import RequestError
from loadpilot.locust.events import events

#: What the clients' methods take besides the URL (Locust's keywords).
KEYWORDS = (
    "name",
    "catch_response",
    "params",
    "headers",
    "json",
    "data",
    "files",
    "auth",
    "cookies",
    "timeout",
    "allow_redirects",
    "context",
)


#: The HTTP method of each request name given with ``name=`` (for Locust's CSV Type column).
METHODS: dict[str, str] = {}


class ErrorResponse:
    """What a request that got no response gives (Locust's): status 0, its ``error``. In a
    ``catch_response`` block, ``success()`` and ``failure()`` change nothing: the error is
    counted."""

    status_code = 0
    elapsed = datetime.timedelta(0)
    content = b""
    text = ""
    headers: dict[str, str] = {}
    ok = False
    url = None
    js = None

    def __init__(self, error: RequestError) -> None:
        self.error = error

    def json(self) -> Any:
        raise ValueError(f"no response: {self.error}")

    def raise_for_status(self) -> None:
        raise self.error

    def success(self) -> None:
        pass

    def failure(self, message: object) -> None:
        pass

    def __enter__(self) -> ErrorResponse:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class HttpSession:
    """Locust's ``HttpSession`` API over the engine's client (``base`` is the run's target,
    so an absolute URL on the same host is sent as its path)."""

    def __init__(self, inner: Any, user: Any) -> None:
        self._inner = inner
        self._user = user
        #: Headers sent with every request of this user (a request's own win), and Basic
        #: auth for requests that give none: requests.Session's ``headers`` and ``auth``.
        self.headers: dict[str, str] = {}
        self.auth: tuple[str, str] | None = None

    def _path(self, url: str) -> str:
        if "://" not in url:
            return url
        given = urllib.parse.urlsplit(url)
        host = getattr(getattr(self._user, "environment", None), "host", None) or ""
        base = urllib.parse.urlsplit(host)
        if (given.scheme, given.netloc) != (base.scheme, base.netloc):
            raise ValueError(
                f"{url}: LoadPilot sends a user's requests to the run's host ({host}) only"
            )
        return urllib.parse.urlunsplit(("", "", given.path or "/", given.query, ""))

    def request(
        self,
        method: str,
        url: str,
        name: str | None = None,
        catch_response: bool = False,
        context: Any = None,
        allow_redirects: bool = True,
        **kwargs: Any,
    ) -> Any:
        unknown = set(kwargs) - set(KEYWORDS)
        if unknown:
            raise TypeError(
                f"{method.lower()}() takes no keyword {sorted(unknown)[0]!r} under LoadPilot; "
                f"it takes {', '.join(KEYWORDS)}"
            )
        path = self._path(url)
        if self.headers:
            given = kwargs.get("headers") or {}
            mine = {k.lower() for k in given}
            kwargs["headers"] = {
                **{k: v for k, v in self.headers.items() if k.lower() not in mine},
                **given,
            }
        if self.auth is not None and kwargs.get("auth") is None:
            kwargs["auth"] = self.auth
        listening = events.request.has_listeners()
        began = time.perf_counter() if listening else 0.0
        if name is not None:
            kwargs["name"] = name
            if name not in METHODS and len(METHODS) < 10_000:
                METHODS[name] = method.upper()
        if catch_response:
            kwargs["catch_response"] = True
        if not allow_redirects:
            kwargs["follow_redirects"] = False
        try:
            r = self._inner.request(method.upper(), path, **kwargs)
        except RequestError as e:
            if e.kind == "cancelled":
                raise
            r = ErrorResponse(e)
        if listening:
            self._fire(method, name or path.split("?")[0], url, r, began, context)
        return r

    def _fire(self, method: str, name: str, url: str, r: Any, began: float, context: Any) -> None:
        failed = isinstance(r, ErrorResponse) or r.status_code >= 400
        # The engine's own service time when there was an answer (as Locust measures it).
        took = r.elapsed.total_seconds() if not isinstance(r, ErrorResponse) else None
        events.request.fire(
            request_type=method.upper(),
            name=name,
            response_time=(took if took else time.perf_counter() - began) * 1000,
            response_length=len(r.content or b""),
            response=r,
            context=context or {},
            exception=(
                r.error
                if isinstance(r, ErrorResponse)
                else (RuntimeError(f"HTTP {r.status_code}") if failed else None)
            ),
            start_time=time.time() - (time.perf_counter() - began),
            url=url,
        )

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, data: Any = None, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", url, data=data, json=json, **kwargs)

    def put(self, url: str, data: Any = None, **kwargs: Any) -> Any:
        return self.request("PUT", url, data=data, **kwargs)

    def patch(self, url: str, data: Any = None, **kwargs: Any) -> Any:
        return self.request("PATCH", url, data=data, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self.request("DELETE", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> Any:
        return self.request("HEAD", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> Any:
        return self.request("OPTIONS", url, **kwargs)

    @contextmanager
    def rest(
        self, method: str, url: str, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Generator[Any, None, None]:
        """A JSON request whose response is checked in a ``with`` block (Locust's ``rest()``):
        ``Content-Type`` and ``Accept`` are ``application/json`` unless ``headers`` give their
        own; ``r.js`` is the parsed body; a body that is not JSON, an assertion or any
        exception in the block fails the request, with Locust's message."""
        sent = dict(headers or {})
        given = {k.lower() for k in sent}
        for name, value in (("Content-Type", "application/json"), ("Accept", "application/json")):
            if name.lower() not in given:
                sent[name] = value
        with self.request(method, url, headers=sent, catch_response=True, **kwargs) as r:
            r.js = None
            if not isinstance(r, ErrorResponse) and r.text:
                try:
                    r.js = r.json()
                except _json.JSONDecodeError as e:
                    r.failure(
                        f"Could not parse response as JSON. {r.text[:250]}, response code "
                        f"{r.status_code}, error {e}"
                    )
            try:
                yield r
            except AssertionError as e:
                if e.args and isinstance(e.args[0], str):
                    msg = e.args[0]
                    r.failure(
                        f"{msg[:-1]}, response was {r.text[:200]}" if msg.endswith(",") else msg
                    )
                else:
                    r.failure("Assertion failed")
            except Exception as e:  # noqa: BLE001 - Locust counts any exception as a failure
                r.failure(_exception_failure(e, r.text[:200]))

    @contextmanager
    def rest_(
        self, method: str, url: str, name: str | None = None, **kwargs: Any
    ) -> Generator[Any, None, None]:
        """``rest()`` with ``_=<milliseconds since the epoch>`` added to the query (to get
        past caches), measured under ``name``, by default ``url?_=...`` (Locust's)."""
        sep = "&" if "?" in url else "?"
        if name is None:
            name = f"{url}{sep}_=..."
        with self.rest(method, f"{url}{sep}_={int(time.time() * 1000)}", name=name, **kwargs) as r:
            yield r


class RestSession(HttpSession):
    """``FastHttpSession``: Locust's other client, the same API here."""


def _exception_failure(e: Exception, text: str) -> str:
    """Locust's message for an exception in a ``rest()`` block: what it was, and where in the
    locustfile (the frames of LoadPilot's own code left out)."""
    own = Path(__file__).resolve().parents[1]
    where = [
        f"{f.filename}:{f.lineno} in {f.name}"
        for f in traceback.extract_tb(e.__traceback__)
        if not Path(f.filename).resolve().is_relative_to(own)
    ]
    at = f" at {', '.join(where)}" if where else ""
    return f"{type(e).__name__}: {e}{at}. Response was {text}"
