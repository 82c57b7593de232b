"""Every Python and shell example of the README and of docs/analysis.md, distributed.md,
kubernetes.md, locust.md, observability.md and serve.md runs as printed, in order, in a scratch
directory that holds `datasets/` (the recorded runs the analysis examples read), against the
built-in target.

Two substitutions: the documented ports (8080 the target, 8000 the API, 9464 metrics) become free
ports, and `curl -s` fails on a 4xx or 5xx answer (`--fail-with-body`). What the examples print
is checked where it states a fact (a streamed run's summary, the HTTP/2 example's counts). Lines
not run, and why: `make test` (this suite is part of it) and `make lab` (an interactive server);
`pip install` (tests/test_install.py runs each in a scratch environment); anything naming a host
other than this machine (the cluster examples: nothing here is ever sent elsewhere); `docker`,
`helm` and `kubectl` (a cluster). Their count per document and reason is asserted, so none is
left out silently. A new example is run too: this test reads the documents, it does not list
their examples."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadpilot.cluster.server import free_port

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    "README.md",
    "docs/analysis.md",
    "docs/ci.md",
    "docs/distributed.md",
    "docs/kubernetes.md",
    "docs/locust.md",
    "docs/observability.md",
    "docs/scenarios.md",
    "docs/serve.md",
]
#: Documents whose fences are all listings (file layouts, log heads, schemas), never commands.
LISTINGS = [
    "docs/architecture.md",
    "docs/run-directory.md",
    "docs/benchmarks.md",
    "docs/cli.md",
    "docs/development.md",
]
#: The ports the documents use (the built-in target, the API, Prometheus metrics): each becomes
#: a free port of its own.
PORTS = ("8080", "8000", "9464")


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str
    #: A CI job's commands: run in a directory of their own, as a fresh checkout of the user's
    #: repository (the workspace's files linked into it).
    job: bool = False

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for doc in DOCS:
        lines = (ROOT / doc).read_text().splitlines()
        i = 0
        while i < len(lines):
            m = re.fullmatch(r"```(\w*)", lines[i])
            if m is None:
                i += 1
                continue
            start, body = i + 1, []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            i += 1
            if m.group(1) in ("python", "sh"):
                found.append(Block(doc, start, m.group(1), "\n".join(body) + "\n"))
            elif m.group(1) == "yaml":
                found.append(Block(doc, start, "sh", "\n".join(ci_commands(body)) + "\n", True))
    return found


def ci_commands(lines: list[str]) -> list[str]:
    """The shell commands of a CI configuration, in order: a GitHub Actions workflow's `run`
    steps, a GitLab CI job's `script`."""
    import yaml

    config = yaml.safe_load("\n".join(lines))
    commands: list[str] = []
    for job in (config.get("jobs") or {}).values():
        commands += [s["run"] for s in job.get("steps", []) if "run" in s]
    for job in config.values():
        if isinstance(job, dict) and "script" in job:
            commands += list(job["script"])
    assert commands, "a CI configuration with no commands"
    return commands


_URL_HOST = re.compile(
    r"\b(?:https?|nats)://(?:[^@/\s]*@)?([A-Za-z0-9_.\-\[\]:]+?)(?::\d+)?(?:/|\s|'|\"|$)"
)


def elsewhere(text: str) -> bool:
    """Whether the text names a host other than this machine."""
    hosts = _URL_HOST.findall(text)
    return any(h not in ("127.0.0.1", "localhost", "[::1]") for h in hosts)


def commands(text: str) -> list[str]:
    """The shell lines of a block, a line ending in a backslash joined with the next."""
    out: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


CLUSTER = re.compile(r"^(?:docker|kubectl|helm)\b|\$\((?:kubectl)|\$TOKEN\b")


#: Install lines run elsewhere: each in a scratch environment of its own.
INSTALL = "an install line (tests/test_install.py runs it)"


def skipped(line: str) -> str | None:
    command = line.split("#", 1)[0].strip()
    if command in ("make test", "make lab"):
        return "a make verb this suite cannot run from inside itself"
    if command.startswith("pip install"):
        return INSTALL
    if elsewhere(line):
        return "names a host other than this machine"
    if CLUSTER.search(command):
        return "needs a Kubernetes cluster or a container engine"
    return None


#: Every line the examples leave out, by document and reason: a new line left out must be
#: added here, so nothing is skipped silently.
SKIPPED = {
    ("README.md", "a make verb this suite cannot run from inside itself"): 2,
    ("docs/ci.md", INSTALL): 2,
    ("README.md", INSTALL): 2,
    ("README.md", "names a host other than this machine"): 2,
    ("docs/distributed.md", "a Python example naming a host other than this machine"): 1,
    ("docs/distributed.md", INSTALL): 1,
    ("docs/distributed.md", "names a host other than this machine"): 2,
    ("docs/kubernetes.md", "names a host other than this machine"): 2,
    ("docs/kubernetes.md", "needs a Kubernetes cluster or a container engine"): 14,
}


def env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def _out_dir(command: str) -> str | None:
    """The run directory a command names with ``--out``, if it names one."""
    words = shlex.split(command)
    for i, word in enumerate(words[:-1]):
        if word == "--out":
            return words[i + 1]
    return None


def _shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """An example's command, run as a user's shell would, its output kept."""
    return subprocess.run(
        command, shell=True, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300
    )


def _validity(stdout: str) -> str:
    """The verdict and its reasons, as a run prints them."""
    lines = stdout.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("validity:")), None)
    if at is None:
        return "(no validity printed)"
    return "\n".join(lines[at : at + 8])


def answering(port: int, timeout_s: float = 30) -> bool:
    """Whether something answers HTTP on the port (any status) within the time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/")
            c.getresponse().read()
            return True
        except OSError:
            time.sleep(0.1)
    return False


class Workspace:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ports = {p: str(free_port()) for p in PORTS}
        self.background: list[subprocess.Popen[bytes]] = []
        self.started: set[str] = set()
        (path / "datasets").symlink_to(ROOT / "datasets")

    def close(self) -> None:
        for p in self.background:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)

    def local(self, text: str) -> str:
        for documented, ours in self.ports.items():
            text = text.replace(documented, ours)
        return text

    def checkout(self, block: Block) -> Path:
        """A directory of its own for a CI job, holding links to the workspace's files (what
        the user's repository would hold: shop.py, the feed, the recorded baseline)."""
        where = self.path / f"job-{Path(block.doc).stem}-{block.line}"
        where.mkdir()
        for entry in self.path.iterdir():
            # Not the run directories other examples wrote: a fresh checkout has none.
            if not entry.name.startswith("job-") and entry.name != "runs":
                (where / entry.name).symlink_to(entry)
        return where

    def sh(self, block: Block) -> None:
        cwd = self.checkout(block) if block.job else self.path
        for line in commands(block.text):
            if not line.strip() or line.lstrip().startswith("#") or skipped(line):
                continue
            command = line.split("  #", 1)[0].strip()
            if command == "make demo":
                done = subprocess.run(
                    ["make", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=300
                )
                assert done.returncode == 0, (block.where, done.stdout[-2000:], done.stderr)
                assert "ended: completed" in done.stdout, (block.where, done.stdout[-2000:])
                continue
            if command.endswith("&"):
                command = self.local(command[:-1].strip())
                if command in self.started:
                    continue  # already serving (an earlier example started it)
                self.started.add(command)
                self.background.append(
                    subprocess.Popen(command, shell=True, cwd=cwd, env=env(),
                                     stdout=subprocess.DEVNULL, start_new_session=True)
                )  # fmt: skip
                port = int(re.search(r"--port (\d+)", command).group(1))  # type: ignore[union-attr]
                assert answering(port), (block.where, command)
                continue
            if command.startswith("loadpilot target"):
                # A server in the foreground: on a port of its own, answering, then stopped.
                port = free_port()
                server = subprocess.Popen(
                    command.replace("8080", str(port)), shell=True, cwd=cwd, env=env(),
                    stdout=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
                try:
                    assert answering(port), (block.where, command)
                finally:
                    os.killpg(server.pid, signal.SIGTERM)
                    server.wait(10)
                continue
            command = self.local(command)
            if command.startswith("curl -s "):
                # An answer of 4xx or 5xx fails the example (curl alone exits 0 on them).
                command = command.replace("curl -s ", "curl -sS --fail-with-body ", 1)
            done = _shell(command, cwd)
            if done.returncode == 4 and "the run is invalid" in done.stdout:
                # The run says it measured the generator: on this shared machine of two cores,
                # a stall of the whole machine (its target's service time included) does that
                # now and then. The example is whether the command works as printed: once more,
                # and an invalid run again fails it, its verdict's evidence shown.
                print(f"{block.where}: judged invalid, run again:\n{_validity(done.stdout)}")
                out = _out_dir(command)
                if out is not None:  # the run directory it names is the invalid run's now
                    shutil.rmtree(cwd / out)
                done = _shell(command, cwd)
            expected = {0}
            if command.startswith("loadpilot compare datasets/"):
                expected = {1}  # the recorded candidate regressed: the gate says so
            elif command.startswith("loadpilot compare"):
                expected = {0, 1}  # a run of this machine against its baseline: either
            elif "--threshold" in command:
                expected = {0, 1}  # whether p99 stays under 20 ms is this machine's business
            assert done.returncode in expected, (
                block.where, command, done.returncode, _validity(done.stdout),
                done.stdout[-3000:], done.stderr[-3000:],
            )  # fmt: skip
            assert "Traceback" not in done.stderr, (block.where, command, done.stderr)
            if command.startswith("loadpilot run"):
                assert "ended: completed" in done.stdout, (block.where, done.stdout[-3000:])
            if command.startswith("curl") and command.endswith("/run"):
                # A streamed run: its rows, then its summary.
                last = json.loads(done.stdout.strip().splitlines()[-1])
                assert last["summary"]["ended"] == "completed", (block.where, last)
                assert last["summary"]["overall"]["errors"] == 0, (block.where, last)
            if command.startswith("curl") and command.endswith("/healthz"):
                assert json.loads(done.stdout) == {"status": "ok"}, (block.where, done.stdout)

    def python(self, block: Block) -> None:
        first = block.text.splitlines()[0].strip()
        if re.fullmatch(r"# [\w-]+\.py", first):
            # A file the examples after it use (shop.py), written as printed.
            (self.path / first[2:]).write_text(block.text)
            return
        if elsewhere(block.text):
            return
        # As printed, nothing added: an example that uses a name it does not define fails.
        script = self.path / f"example_{Path(block.doc).stem}_{block.line}.py"
        script.write_text(self.local(block.text))
        done = subprocess.run(
            [sys.executable, script.name], cwd=self.path, env=env(), capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, (block.where, done.stdout[-3000:], done.stderr[-3000:])
        # What an example prints is checked where it states a fact the reader could check.
        if '"over HTTP/2' in block.text:
            m = re.search(r"^(\d+) requests, (\d+) over HTTP/2", done.stdout, re.M)
            assert m and m.group(1) == m.group(2) != "0", (block.where, done.stdout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    ws = Workspace(tmp_path_factory.mktemp("docs"))
    # The files the examples need, as the documents write them (a `# shop.py` block, a
    # `printf ... > users.csv` line), are there before any example runs: an example may use
    # one that the document shows further down.
    for b in blocks():
        first = b.text.splitlines()[0].strip()
        if b.lang == "python" and re.fullmatch(r"# [\w-]+\.py", first):
            (ws.path / first[2:]).write_text(b.text)
        for line in b.text.splitlines() if b.lang == "sh" else []:
            if line.startswith("printf ") and ">" in line:
                command = line.split("  #", 1)[0]
                subprocess.run(command, shell=True, cwd=ws.path, check=True, timeout=60)
    try:
        yield ws
    finally:
        ws.close()


def test_the_documents_have_examples_and_none_is_left_out() -> None:
    found = blocks()
    assert sum(b.doc == "README.md" for b in found) >= 8
    langs = {b.lang for b in found}
    assert langs == {"python", "sh"}
    # Every fence says its language, and only examples' languages are commands: a fence of
    # another language would be skipped silently.
    for doc in DOCS + LISTINGS:
        text = (ROOT / doc).read_text()
        opening = re.findall(r"^```(\w*)$", text, re.M)[::2]
        allowed = ("text", "json") if doc in LISTINGS else ("python", "sh", "yaml", "json", "text")
        assert all(lang in allowed for lang in opening), (doc, opening)
    # The lines left out, by document and reason, are exactly the ones listed.
    left_out: dict[tuple[str, str], int] = {}
    for b in found:
        if b.lang == "python":
            if elsewhere(b.text):
                key = (b.doc, "a Python example naming a host other than this machine")
                left_out[key] = left_out.get(key, 0) + 1
            continue
        for line in commands(b.text):
            why = skipped(line)
            if why is not None:
                left_out[(b.doc, why)] = left_out.get((b.doc, why), 0) + 1
    assert left_out == SKIPPED


@pytest.mark.parametrize("block", blocks(), ids=lambda b: b.where)
def test_every_example_runs_as_printed(workspace: Workspace, block: Block) -> None:
    if block.lang == "sh":
        workspace.sh(block)
    else:
        workspace.python(block)
