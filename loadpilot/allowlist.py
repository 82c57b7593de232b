"""Which targets a process may send load to: the allow-list agents and serve mode share."""

from __future__ import annotations

import fnmatch
import ipaddress
from urllib.parse import urlsplit

__all__ = ["is_loopback", "target_allowed"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def target_allowed(target: str, patterns: list[str]) -> bool:
    """Whether an agent whose operator allowed ``patterns`` may send load to ``target``.
    No patterns: loopback only. A pattern is a host or ``host:port`` glob (``*.test``,
    ``10.0.0.*:8080``); ``loopback`` names 127.0.0.0/8, ::1 and localhost."""
    parts = urlsplit(target)
    host = (parts.hostname or "").lower()
    if not host:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for p in patterns or ["loopback"]:
        p = p.lower()
        if p == "loopback":
            if is_loopback(host):
                return True
            continue
        if fnmatch.fnmatchcase(host, p) or fnmatch.fnmatchcase(f"{host}:{port}", p):
            return True
    return False
