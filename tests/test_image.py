"""The container image (deploy/Dockerfile), proved without a container runtime: hadolint finds
nothing to warn about, the last stage is a slim Python running `loadpilot` as an unprivileged
user with no build tools, the versions agree with the chart's, and the wheels install as the
image installs them (offline, from the wheels the build stage makes) into a fresh environment
where `agent`, `serve` and `run` all work."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import venv
from pathlib import Path

import pytest
import yaml

import loadpilot as lp
from loadpilot.cluster.server import free_port

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CHART = ROOT / "deploy" / "helm" / "loadpilot"


def tool(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), by stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[list[str]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out[1:]


def version() -> str:
    v: str = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    return v


def test_hadolint_finds_nothing_to_warn_about(tmp_path: Path) -> None:
    run = [tool("hadolint"), "--failure-threshold", "warning"]
    done = subprocess.run([*run, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # The same check refuses what it should (an unpinned install, a root user, latest).
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install loadpilot\nUSER root\n")
    done = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3013" in done.stdout and "DL3007" in done.stdout


def test_the_last_stage_runs_loadpilot_unprivileged_without_build_tools() -> None:
    last = stages()[-1]
    text = "\n".join(last)
    assert last[0] == "FROM ${PYTHON_IMAGE}"
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in DOCKERFILE.read_text()
    users = [line.split()[1] for line in last if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["loadpilot"]' in last
    for label in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in text
    # Nothing to compile with: no toolchain copied in, no compiler or package manager run.
    for word in ("cargo", "rustup", "maturin", "gcc", "apt-get", "COPY --from"):
        assert word not in text, word
    # Installed offline from the build stage's wheels only (another project holds the name
    # `loadpilot` on PyPI: the package must never come from an index).
    assert "--no-index --find-links /wheels/deps" in text


def test_the_versions_agree_with_the_chart() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))
    assert args["LOADPILOT_VERSION"] == chart["appVersion"] == version()
    assert values["agent"]["image"]["tag"] == chart["appVersion"]
    maturin = subprocess.run(
        [tool("maturin"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert maturin.stdout.split()[-1] == args["MATURIN_VERSION"]


def test_make_image_builds_this_dockerfile_at_this_version() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "image", "DOCKER=echo",
         "IMAGE=registry.example.internal/lp"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"build -f deploy/Dockerfile --build-arg LOADPILOT_VERSION={version()} "
        f"-t registry.example.internal/lp:{version()} ."
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment with LoadPilot installed the way the image installs it: maturin
    builds the wheel, pip makes the wheels of its dependencies, and the last stage installs
    from those alone (--no-index)."""
    root = tmp_path_factory.mktemp("image")
    out = root / "wheels/loadpilot"
    subprocess.run(
        [tool("maturin"), "build", "--release", "--locked", "--out", str(out)],
        cwd=ROOT, check=True, capture_output=True, timeout=1200,
    )  # fmt: skip
    (wheel,) = (root / "wheels/loadpilot").glob("loadpilot-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(root / "wheels/deps"),
         f"{wheel}[distributed,serve]"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    env = root / "env"
    venv.create(env, with_pip=True)
    subprocess.run(
        [str(env / "bin/python"), "-m", "pip", "install", "--quiet", "--no-index",
         "--find-links", str(root / "wheels/deps"), f"loadpilot[distributed,serve]=={version()}"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return env


# Building the wheels (the fixture's setup) takes minutes on this machine: the test's limit
# covers its setup, so it gets the subprocesses' limits, not the suite's default.
@pytest.mark.timeout(2400)
def test_the_installed_wheel_runs_every_role(installed: Path, tmp_path: Path) -> None:
    exe = str(installed / "bin/loadpilot")
    for verb in ("agent", "serve", "run"):
        done = subprocess.run(
            [exe, verb, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60
        )
        assert done.returncode == 0 and f"usage: loadpilot {verb}" in done.stdout, done.stderr
    # The NATS server binary of the distributed extra is there for `run --agents`.
    assert (installed / "bin/nats-server").is_file()
    # A real run from the installed package (not this source tree) against the built-in target.
    plan: dict[str, object] = {
        "name": "image",
        "load": {"model": "open", "stages": [{"kind": "constant", "rate": 50, "duration_s": 1}]},
        "tasks": [{"name": "a", "requests": [{"path": "/"}]}],
    }
    with lp.start_target() as target:
        (tmp_path / "plan.json").write_text(json.dumps({**plan, "target": target.url}))
        done = subprocess.run(
            [exe, "run", "plan.json", "--out", "out"],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert target.served == 50
        # The distributed extra at work: the installed nats-server and two agents of the
        # installed package.
        done = subprocess.run(
            # (--allow-invalid: what is asserted is that the extra works and every due request
            # is counted, not that two agents kept their schedule on two shared cores.)
            [exe, "run", "plan.json", "--out", "spread", "--agents", "2", "--allow-invalid"],
            capture_output=True, text=True, cwd=tmp_path, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert target.served == 100
        assert "accounted for: 50 due = 50 ran + 0 cancelled + 0 unsent" in done.stdout, done.stdout
    # The serve extra at work: the installed server answers.
    port = free_port()
    server = subprocess.Popen(
        [exe, "serve", "--port", str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                r = c.getresponse()
                assert (r.status, json.loads(r.read())) == (200, {"status": "ok"})
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "the installed serve never answered"
                time.sleep(0.2)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
    where = subprocess.run(
        [str(installed / "bin/python"), "-c", "import loadpilot; print(loadpilot.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert where.stdout.startswith(str(installed))
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["target_requests"] == summary["overall"]["requests"] == 50
