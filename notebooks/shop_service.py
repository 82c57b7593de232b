"""A small shop to load-test in tutorial 8: stands in for your own service.

    python shop_service.py [--port 0] [--index]

It prints ``listening on http://127.0.0.1:PORT`` once it serves (port 0: a free one) and serves
until it is stopped (SIGTERM or Ctrl-C). Standard library only.

- ``POST /login`` (form ``user``, ``password``): sets a ``session`` cookie and redirects (303) to
  ``/account``; a wrong password is 401.
- ``GET /account``: who is logged in (401 without the cookie).
- ``GET /search?q=``: the items whose name holds ``q``. Without ``--index`` it reads every item
  that matches, a quarter of a millisecond each, so a broad query (``q=`` matches all 200) takes
  about 50 ms; with ``--index`` every query takes about a millisecond.
- ``GET /items/ID``: one item (404 past the catalogue).
- ``POST /cart/upload`` (multipart, field ``cart``: a CSV of ``item,qty`` lines): the lines read.
- ``POST /checkout`` (JSON ``{"item": ID}``): ``{"ok": true}``, or 409 with ``{"ok": false,
  "reason": "out of stock"}`` for every tenth item.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.parse
from email.parser import BytesParser
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = ["tea", "green", "cup", "cake", "pot", "mug", "leaf", "honey", "spoon", "tin"]
CATALOGUE = [{"id": i, "name": f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} {i}"} for i in range(200)]
PASSWORD = "secret"


class Shop(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without this, Nagle's algorithm holds the body until
    # the client acknowledges the headers, which it delays by up to 40 ms.
    disable_nagle_algorithm = True
    index = False

    def log_message(self, *_: object) -> None:  # quiet: a load test sends thousands
        pass

    def reply(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def user(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "session" and value:
                return value
        return None

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/account":
            who = self.user()
            if who:
                self.reply(200, {"user": who})
            else:
                self.reply(401, {"error": "log in"})
        elif url.path == "/search":
            q = urllib.parse.parse_qs(url.query).get("q", [""])[0]
            found = [item for item in CATALOGUE if q in item["name"]]
            time.sleep(0.001 if self.index else 0.00025 * len(found))
            self.reply(200, {"q": q, "count": len(found), "items": found[:10]})
        elif url.path.startswith("/items/"):
            tail = url.path.removeprefix("/items/")
            if tail.isdigit() and int(tail) < len(CATALOGUE):
                self.reply(200, CATALOGUE[int(tail)])
            else:
                self.reply(404, {"error": f"no item {tail}"})
        else:
            self.reply(404, {"error": f"no page {url.path}"})

    def do_POST(self) -> None:  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        data = self.body()
        if url.path == "/login":
            form = urllib.parse.parse_qs(data.decode())
            user, password = form.get("user", [""])[0], form.get("password", [""])[0]
            if not user or password != PASSWORD:
                self.reply(401, {"error": "wrong user or password"})
                return
            headers = {"Set-Cookie": f"session={user}; Path=/", "Location": "/account"}
            self.reply(303, {"user": user}, headers)
        elif url.path == "/cart/upload":
            kind = self.headers.get("Content-Type", "")
            message = BytesParser(policy=default).parsebytes(
                f"Content-Type: {kind}\r\n\r\n".encode() + data
            )
            parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
            cart = parts.get("cart")
            if cart is None:
                self.reply(400, {"error": "no cart file"})
                return
            lines = (cart.get_payload(decode=True) or b"").decode().strip().splitlines()
            self.reply(200, {"lines": max(0, len(lines) - 1)})  # the header line is not a line
        elif url.path == "/checkout":
            try:
                item = int(json.loads(data)["item"])
            except (ValueError, KeyError, TypeError):
                self.reply(400, {"ok": False, "reason": "send {\"item\": ID}"})
                return
            if item % 10 == 0:
                self.reply(409, {"ok": False, "reason": "out of stock"})
            else:
                self.reply(200, {"ok": True, "item": item})
        else:
            self.reply(404, {"error": f"no page {url.path}"})


def main() -> None:
    p = argparse.ArgumentParser(description="A small shop to load-test.")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--index", action="store_true", help="search by an index: fast for any query")
    args = p.parse_args()
    Shop.index = args.index
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Shop)
    server.daemon_threads = True
    server.request_queue_size = 128
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
