"""Hosts of their own for fault tests: each a Linux network namespace with one address, joined
by a bridge in a namespace of the lab's own (nothing is added to this machine's own network),
links cut and healed with nftables, latency added by a small delaying TCP proxy (this kernel has
no netem). Needs root, `ip` and `nft` (`make test` installs them); everything is removed on
``close``."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SUBNET = "10.77.0"


def available() -> str | None:
    """Why a lab cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def sh(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")


class Host:
    """One namespace, address ``ip`` on the lab's bridge."""

    def __init__(self, lab: Lab, name: str, k: int) -> None:
        self.lab = lab
        self.name = name
        self.ns = f"{lab.prefix}{name}"
        self.ip = f"{SUBNET}.{k}"
        inside, outside = f"{lab.prefix}{k}i", f"{lab.prefix}{k}o"
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
        sh("ip", "link", "set", inside, "netns", self.ns)
        sh("ip", "link", "set", outside, "netns", lab.hub)
        lab.exec("ip", "link", "set", outside, "master", "br0", "up")
        self.exec("ip", "link", "set", "lo", "up")
        self.exec("ip", "addr", "add", f"{self.ip}/24", "dev", inside)
        self.exec("ip", "link", "set", inside, "up")
        self.exec("nft", "add", "table", "inet", "lab")
        for hook in ("input", "output"):
            self.exec("nft", "add", "chain", "inet", "lab", hook,
                      f"{{ type filter hook {hook} priority 0 ; }}")  # fmt: skip
        self.procs: list[subprocess.Popen[bytes]] = []

    def exec(self, *args: str) -> None:
        sh("ip", "netns", "exec", self.ns, *args)

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        """A process in this host's namespace, its output into ``log``."""
        with open(log, "ab") as out:
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        self.procs.append(p)
        return p

    def cut(self, other: Host, *, both_ways: bool = True) -> None:
        """Drops every packet from this host to ``other`` (and, ``both_ways``, back) silently."""
        self.exec("nft", "add", "rule", "inet", "lab", "output", "ip", "daddr", other.ip, "drop")
        if both_ways:
            self.exec("nft", "add", "rule", "inet", "lab", "input", "ip", "saddr", other.ip, "drop")

    def heal(self) -> None:
        for hook in ("input", "output"):
            self.exec("nft", "flush", "chain", "inet", "lab", hook)


class Lab:
    """A bridge in a namespace of its own, and hosts on it."""

    def __init__(self) -> None:
        why = available()
        if why is not None:
            # `make test` runs as root and installs nftables: a lab that cannot be built is a
            # failure to see, not a test to skip.
            pytest.fail(f"cannot build the network lab: {why} (run the tests as root after "
                        "`make test` has installed nftables and iproute2)")  # fmt: skip
        self.prefix = "lp" + secrets.token_hex(2)
        self.hub = f"{self.prefix}hub"
        self.hosts: list[Host] = []
        sh("ip", "netns", "add", self.hub)
        self.exec("ip", "link", "add", "br0", "type", "bridge")
        self.exec("ip", "link", "set", "br0", "up")

    def exec(self, *args: str) -> None:
        sh("ip", "netns", "exec", self.hub, *args)

    def host(self, name: str) -> Host:
        h = Host(self, name, len(self.hosts) + 2)
        self.hosts.append(h)
        return h

    def close(self) -> None:
        procs = [p for h in self.hosts for p in h.procs]
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for h in self.hosts:
            subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.hub], capture_output=True)


#: A TCP proxy that delays every chunk, each way, by ``delay ± jitter`` ms, keeping the order
#: (a chunk never overtakes the one before it): run as ``python -c PROXY LISTEN_HOST
#: LISTEN_PORT TO_HOST TO_PORT DELAY_MS JITTER_MS``.
PROXY = r"""
import asyncio, random, sys, time

listen_host, listen_port = sys.argv[1], int(sys.argv[2])
to_host, to_port = sys.argv[3], int(sys.argv[4])
delay, jitter = float(sys.argv[5]) / 1000, float(sys.argv[6]) / 1000

async def pipe(reader, writer):
    queue = asyncio.Queue()
    async def send():
        while True:
            at, data = await queue.get()
            if data is None:
                break
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()
    sender = asyncio.ensure_future(send())
    last = 0.0
    try:
        while data := await reader.read(65536):
            last = max(last, time.monotonic() + delay + random.uniform(-jitter, jitter))
            queue.put_nowait((last, data))
    except OSError:
        pass
    queue.put_nowait((0.0, None))
    try:
        await sender
    except OSError:
        pass

async def serve(reader, writer):
    try:
        up_reader, up_writer = await asyncio.open_connection(to_host, to_port)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

async def main():
    server = await asyncio.start_server(serve, listen_host, listen_port)
    print("proxy listening", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""

PYTHON = sys.executable
