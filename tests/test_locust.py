"""Locustfiles run unchanged by `loadpilot locust`, set beside Locust itself running the same
files against the same kind of server: the server's own record of what arrived is the truth
both are held to (paths, their shares, failures), never LoadPilot's own counts alone."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Recorder

FILES = Path(__file__).parent / "locustfiles"
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def locust_cli(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`loadpilot locust ARGS` run in ``cwd``: its exit code and what it printed."""
    return subprocess.run(
        [str(BIN / "loadpilot"), "locust", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_env(),
    )  # fmt: skip


def run_locust(file: str, users: int, seconds: int, tmp: Path, *extra: str) -> tuple[Recorder, str]:
    """Locust itself, headless, against a fresh recording server: what the server saw."""
    with Recorder.serving() as srv:
        p = subprocess.run(
            [
                str(BIN / "locust"),
                "-f",
                str(FILES / file),
                "--headless",
                "-u",
                str(users),
                "-r",
                str(users * 10),
                "-t",
                f"{seconds}s",
                "-H",
                srv.url,
                "--csv",
                str(tmp / "locust"),
                "--loglevel",
                "WARNING",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(),
            cwd=tmp,
        )
        assert p.returncode in (0, 1), p.stderr[-3000:]
        return srv, p.stdout + p.stderr


def run_loadpilot(
    file: str, users: int, seconds: int, tmp: Path, *extra: str, expect: tuple[int, ...] = (0, 1)
) -> tuple[Recorder, str, dict[str, object], int]:
    """`loadpilot locust` with the same flags: what the server saw, the output, summary.json."""
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "run"
    with Recorder.serving() as srv:
        p = subprocess.run(
            [
                str(BIN / "loadpilot"),
                "locust",
                "-f",
                str(FILES / file),
                "--headless",
                "-u",
                str(users),
                "-r",
                str(users * 10),
                "-t",
                f"{seconds}s",
                "-H",
                srv.url,
                "--out",
                str(out),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(),
            cwd=tmp,
        )
        assert p.returncode in expect, p.stdout[-3000:] + p.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text()) if out.exists() else {}
        return srv, p.stdout + p.stderr, summary, p.returncode


def shares(srv: Recorder, strip_query: bool = True) -> dict[str, float]:
    seen = Counter(f"{m} {path.split('?')[0] if strip_query else path}" for m, path, _ in srv.seen)
    total = sum(seen.values())
    return {k: v / total for k, v in seen.items()}


def assert_same_mix(a: dict[str, float], b: dict[str, float], within: float) -> None:
    """The same requests, in the same proportions (within what a few seconds allow)."""
    assert set(a) == set(b), (sorted(a), sorted(b))
    for k in a:
        assert abs(a[k] - b[k]) <= within, (k, a[k], b[k], a, b)


def request_stats(summary: dict[str, object]) -> dict[str, dict[str, int]]:
    return {r["name"]: r for r in summary["requests"]}  # type: ignore[union-attr,index]


@pytest.mark.slow
def test_quickstart_sends_what_locust_sends_with_straight_line_tasks_in_the_engine(
    tmp_path: Path,
) -> None:
    ours, text, summary, code = run_loadpilot("quickstart.py", 4, 3, tmp_path)
    theirs, _ = run_locust("quickstart.py", 4, 3, tmp_path)
    assert code == 0, text
    # Both log each user in once, then 1 hello_world (2 requests) to 3 view_items (10 each).
    assert_same_mix(shares(ours), shares(theirs), within=0.03)
    assert shares(ours)["GET /hello"] == pytest.approx(2 / 32 / 2, abs=0.02)
    logins = [b for b in ours.bodies if b[0] == "/login"]
    assert len(logins) == 4 and all(json.loads(b[2])["user"] == "foo" for b in logins)
    tasks = {t["name"]: t for t in summary["tasks"]}  # type: ignore[union-attr]
    assert tasks["hello_world"]["path"] == "engine" and tasks["view_items"]["path"] == "python"
    # Every request the server answered is counted, under Locust's names.
    served = Counter(path.split("?")[0] for _, path, _ in ours.seen)
    stats = request_stats(summary)
    assert stats["/item"]["requests"] == served["/item"]
    assert stats["GET /hello"]["requests"] == served["/hello"]
    # The end of the output is Locust's table (service time) with the corrected p99 beside it.
    table = text[text.index("as Locust reports it") :].splitlines()
    item = next(line.split() for line in table if line.startswith("GET     /item "))
    assert int(item[2]) == served["/item"] and item[3] == "0(0.00%)"


@pytest.mark.slow
def test_tasksets_nested_sequential_and_tags_choose_tasks_as_locust_does(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot("tasksets.py", 4, 4, tmp_path)
    theirs, _ = run_locust("tasksets.py", 4, 4, tmp_path)
    assert code == 0, text
    assert_same_mix(shares(ours), shares(theirs), within=0.06)
    # A sequential set runs in order: every pay follows a cart of the same user.
    assert abs(shares(ours)["GET /cart"] - shares(ours)["POST /pay"]) < 0.02
    assert [b[2] for b in ours.bodies if b[0] == "/pay"][0] == b"card=4111"
    # -T keeps the tagged task only; -E leaves it out.
    only, _, _, _ = run_loadpilot("tasksets.py", 2, 2, tmp_path / "t", "-T", "account")
    assert set(shares(only)) == {"GET /account"}
    without, _, _, _ = run_loadpilot("tasksets.py", 2, 2, tmp_path / "e", "-E", "account")
    assert "GET /account" not in shares(without) and "GET /cart" in shares(without)


@pytest.mark.slow
def test_rest_assertions_and_statuses_fail_the_requests_locust_fails(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot("rest.py", 3, 3, tmp_path, "--csv", "lp")
    theirs, _ = run_locust("rest.py", 3, 3, tmp_path)
    assert code == 1, text  # failed requests: Locust's exit code
    assert_same_mix(shares(ours), shares(theirs), within=0.06)
    stats = request_stats(summary)
    served = Counter(path for _, path, _ in ours.seen)
    # Every "wrong" (a failed assertion) and "broken" (500) failed; the others passed.
    assert stats["wrong"]["errors"] == stats["wrong"]["requests"] > 0
    assert stats["broken"]["errors"] == stats["broken"]["requests"] == served["/status/500"]
    assert stats["GET /json"]["errors"] == 0
    assert stats["GET /json"]["requests"] + stats["wrong"]["requests"] == served["/json"]
    messages = {f["message"] for f in summary["failures"]}  # type: ignore[union-attr]
    assert "expected no items" in messages
    # Locust counts the same ones as failures.
    with open(tmp_path / "locust_stats.csv") as f:
        theirs_stats = {r["Name"]: r for r in csv.DictReader(f)}
    assert theirs_stats["wrong"]["Failure Count"] == theirs_stats["wrong"]["Request Count"]
    assert theirs_stats["/json"]["Failure Count"] == "0"
    # --csv writes Locust's files with Locust's columns, holding what the server saw.
    for part in ("stats", "stats_history", "failures", "exceptions"):
        with open(tmp_path / f"locust_{part}.csv") as a, open(tmp_path / f"lp_{part}.csv") as b:
            assert next(csv.reader(b)) == next(csv.reader(a)), part
    with open(tmp_path / "lp_stats.csv") as f:
        mine = {r["Name"]: r for r in csv.DictReader(f)}
    assert mine["broken"]["Type"] == "GET" and mine["/json"]["Type"] == "GET"
    assert int(mine["broken"]["Request Count"]) == int(mine["broken"]["Failure Count"])
    assert int(mine["broken"]["Request Count"]) == served["/status/500"]
    assert int(mine["wrong"]["Failure Count"]) == stats["wrong"]["errors"]
    assert int(mine["Aggregated"]["Request Count"]) == len(ours.seen)
    assert (
        float(mine["/json"]["50%"]) <= float(mine["/json"]["99%"]) <= float(mine["/json"]["100%"])
    )
    with open(tmp_path / "lp_failures.csv") as f:
        failures = {(r["Name"], r["Error"]): int(r["Occurrences"]) for r in csv.DictReader(f)}
    assert failures[("wrong", "expected no items")] == stats["wrong"]["errors"]
    with open(tmp_path / "lp_stats_history.csv") as f:
        history = list(csv.DictReader(f))
    assert 2 <= len(history) <= 4 and history[-1]["Total Request Count"] == str(len(ours.seen))


@pytest.mark.slow
def test_an_http_users_rest_and_rest__send_and_fail_as_locust_s_do(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot("rest_http.py", 2, 2, tmp_path, "--csv", "lp")
    theirs, _ = run_locust("rest_http.py", 2, 2, tmp_path)
    assert code == 1, text
    assert_same_mix(shares(ours), shares(theirs), within=0.06)
    # rest_(): a fresh `_=<ms>` query each time, measured under Locust's name for it.
    fresh = [path for _, path, _ in ours.seen if path.startswith("/json?_=")]
    assert len(fresh) > 10 and all(p.removeprefix("/json?_=").isdigit() for p in fresh), fresh
    stats = request_stats(summary)
    assert stats["/json?_=..."]["errors"] == 0 and stats["/json?_=..."]["requests"] == len(fresh)
    # The task's own Content-Type, sent once (not beside rest()'s or json='s default).
    for server in (ours, theirs):
        types = {t for _, t, _ in server.bodies}
        assert types == {"application/merge-patch+json"}, types
    assert stats["POST /echo"]["errors"] == 0
    # An exception in the block fails the request with Locust's message: what and where.
    assert stats["broken"]["errors"] == stats["broken"]["requests"] > 0
    where = f'{FILES / "rest_http.py"}:26 in broken. Response was {{"ok": true'
    messages = {f["message"] for f in summary["failures"]}  # type: ignore[union-attr]
    assert any(m.startswith("KeyError: 'missing' at ") and where in m for m in messages), messages
    with open(tmp_path / "locust_failures.csv") as f:
        theirs_failed = {r["Name"]: r["Error"] for r in csv.DictReader(f)}
    assert where in theirs_failed["broken"], theirs_failed
    with open(tmp_path / "locust_stats.csv") as a, open(tmp_path / "lp_stats.csv") as b:
        assert {r["Name"] for r in csv.DictReader(a)} == {r["Name"] for r in csv.DictReader(b)}


@pytest.mark.slow
def test_a_fast_http_users_default_headers_go_with_every_request_as_locust_s_do(
    tmp_path: Path,
) -> None:
    (tmp_path / "locustfile.py").write_text(
        """
from locust import FastHttpUser, constant, task

class Api(FastHttpUser):
    wait_time = constant(0.02)
    default_headers = {"Authorization": "Bearer team"}
    concurrency = 4  # accepted: one user sends one request at a time, under Locust too

    @task
    def plain(self):
        self.client.get("/plain")

    @task
    def own(self):
        self.client.get("/own", headers={"authorization": "Bearer mine"})

    @task
    def logic(self):
        r = self.client.get("/logic")
        r.raise_for_status()
"""
    )
    expected = {"/plain": "Bearer team", "/own": "Bearer mine", "/logic": "Bearer team"}
    for tool in ("loadpilot", "locust"):
        with Recorder.serving() as srv:
            cmd = (
                [str(BIN / "loadpilot"), "locust", "--out", str(tmp_path / "run")]
                if tool == "loadpilot"
                else [str(BIN / "locust"), "--loglevel", "WARNING"]
            )
            p = subprocess.run(
                [*cmd, "--headless", "-u", "2", "-r", "20", "-t", "2s", "-H", srv.url],
                capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_env(),
            )  # fmt: skip
            assert p.returncode == 0, p.stdout + p.stderr
            seen = {(path, auth) for _, path, auth in srv.seen}
        assert seen == set(expected.items()), (tool, seen)
        if tool == "loadpilot":
            # Known before the run: the straight-line tasks stay in the engine.
            assert "plain (weight 1, engine), own (weight 1, engine)" in p.stdout, p.stdout


#: The chain of tests/locustfiles/markov.py: each page's next pages, with their weights.
CHAIN = {
    "index": {"browse": 1},
    "browse": {"index": 3, "product": 1},
    "product": {"index": 1, "cart": 2},
    "cart": {"checkout": 1, "browse": 1},
    "checkout": {"index": 1},
}


def walks(srv: Recorder) -> dict[str, list[str]]:
    """Each user's pages in the order the server got them (a user sends one at a time)."""
    out: dict[str, list[str]] = {}
    for _, path, _ in srv.seen:
        page, _, user = path.removeprefix("/").partition("?u=")
        out.setdefault(user, []).append(page)
    return out


@pytest.mark.slow
def test_a_markov_task_set_walks_its_chain_as_locust_s_does(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot("markov.py", 3, 2, tmp_path)
    theirs, _ = run_locust("markov.py", 3, 2, tmp_path)
    assert code == 0, text
    for tool, srv in (("loadpilot", ours), ("locust", theirs)):
        users = walks(srv)
        assert len(users) == 3, (tool, users.keys())
        moves: Counter[tuple[str, str]] = Counter()
        for walk in users.values():
            assert walk[0] == "index", (tool, walk[:5])  # a chain starts at its first task
            moves.update(zip(walk, walk[1:], strict=False))
        # Every step is one of the chain's transitions, and each is taken.
        assert set(moves) == {(a, b) for a, nexts in CHAIN.items() for b in nexts}, (tool, moves)
        # ... by its weight: from browse, 3 of 4 go back to index; from product, 2 of 3 to cart
        # (within four standard deviations of a draw of that many).
        for page, to, share in (("browse", "index", 3 / 4), ("product", "cart", 2 / 3)):
            left = sum(n for (a, _), n in moves.items() if a == page)
            within = 4 * (share * (1 - share) / left) ** 0.5
            assert left > 40 and abs(moves[(page, to)] / left - share) < within, (tool, moves)
    # The same pages in about the same shares (a few hundred steps of a chain each: the
    # transitions' weights are held exactly above).
    assert_same_mix(shares(ours), shares(theirs), within=0.08)
    stats = request_stats(summary)
    assert set(stats) == set(CHAIN) and all(s["errors"] == 0 for s in stats.values()), stats


@pytest.mark.slow
def test_run_single_user_prints_every_request_of_one_user(tmp_path: Path) -> None:
    # A locustfile with Locust's debugging block loads and runs as any other (the block is
    # for `python locustfile.py`).
    (tmp_path / "locustfile.py").write_text(
        "from locust import HttpUser, constant, run_single_user, task\n\n"
        "class U(HttpUser):\n    wait_time = constant(0.05)\n\n    @task\n"
        "    def t(self):\n        self.client.get('/one', name='one')\n"
        "        self.client.get('/status/500')\n\n"
        "if __name__ == '__main__':\n    run_single_user(U)\n"
    )
    with Recorder.serving() as srv:
        p = locust_cli(
            tmp_path, "-u", "1", "-t", "1s", "-H", srv.url, "--out", str(tmp_path / "run")
        )
        assert p.returncode == 1, p.stdout + p.stderr  # the 500s failed
        assert len(srv.seen) > 10
    # Called, it runs one user (the host from -H, as Locust's reads it) and prints each request.
    (tmp_path / "debug.py").write_text(
        "import itertools\n"
        "from loadpilot.locust import HttpUser, constant, events, run_single_user, task\n\n"
        "started = []\nevents.test_start.add_listener(lambda **kw: started.append(1))\n"
        "ids = itertools.count()\n\n"
        "class U(HttpUser):\n    wait_time = constant(0.05)\n\n"
        "    def on_start(self):\n        self.me = next(ids)\n\n    @task\n"
        "    def t(self):\n        self.client.get(f'/one?u={self.me}', name='one')\n"
        "        self.client.get('/status/500')\n\n"
        "run = run_single_user(U, include_length=True, run_time='1s')\n"
        "print('started', len(started), 'requests', run.summary().overall.requests)\n"
    )
    with Recorder.serving() as srv:
        p = subprocess.run(
            [sys.executable, "debug.py", "-H", srv.url],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_env(),
        )  # fmt: skip
        seen = [path for _, path, _ in srv.seen]
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("type\t"))
    assert lines[header].split("\t")[:5] == ["type", "name".ljust(50), "resp_ms", "length",
                                             "exception"]  # fmt: skip
    rows = [line.split("\t") for line in lines[header + 1 :] if line.startswith("GET\t")]
    # One row per request the server got, in order; one user only.
    assert len(rows) == len(seen) > 10, (rows, seen)
    assert {path for path in seen if path.startswith("/one")} == {"/one?u=0"}
    for row, path in zip(rows, seen, strict=True):
        name = "one" if path.startswith("/one") else "/status/500"
        assert row[1].strip() == name and row[2].strip().isdigit(), row
        assert row[3] == ("2" if name == "one" else "6"), row  # the response's length
        assert ("500" in row[4]) == (name != "one"), row
    assert f"started 1 requests {len(seen)}" in p.stdout


@pytest.mark.slow
def test_iterations_end_the_run_once_that_many_tasks_have_run(tmp_path: Path) -> None:
    (tmp_path / "locustfile.py").write_text(
        "from locust import HttpUser, constant, task\n\n"
        "class U(HttpUser):\n    wait_time = constant(0.005)\n\n"
        "    @task(3)\n    def plain(self):\n        self.client.get('/plain')\n\n"
        "    @task\n    def logic(self):\n        r = self.client.get('/sleep/20')\n"
        "        r.raise_for_status()\n"
    )
    for extra in ([], ["--processes", "2"]):
        out = tmp_path / f"run{len(extra)}"
        with Recorder.serving() as srv:
            # No -t: the iterations bound the run (as under Locust's -i).
            p = locust_cli(
                tmp_path,
                "-u",
                "3",
                "-r",
                "30",
                "-i",
                "61",
                "-H",
                srv.url,
                "--out",
                str(out),
                *extra,
                timeout=90,
            )
            assert p.returncode == 0, p.stdout + p.stderr
            seen = Counter(path for _, path, _ in srv.seen)
        summary = json.loads((out / "summary.json").read_text())
        # Exactly 61 tasks, on both paths, each to its end; then the run ended.
        assert sum(seen.values()) == 61 and seen["/plain"] > seen["/sleep/20"] > 0, seen
        assert summary["ended"] == "completed" and summary["duration_s"] < 60, summary
        assert "(weight 3, engine), logic (weight 1, python)" in p.stdout, p.stdout
    for args, said in (
        (["-i", "0"], "-i/--iterations: invalid max_iterations"),
        (["-i", "5", "--rps", "10", "-t", "1s"], "-i/--iterations counts the users' iterations"),
    ):
        p = locust_cli(tmp_path, "-u", "1", "-H", "http://127.0.0.1:9", *args)
        assert p.returncode == 2 and said in p.stderr, p.stdout + p.stderr


@pytest.mark.slow
def test_listeners_hear_every_request_and_the_run_s_start_and_end(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot("listeners.py", 2, 2, tmp_path)
    assert code == 1, text
    lines = [ln for ln in text.splitlines() if ln.startswith("listener:")]
    assert lines[0] == "listener: init"
    assert lines[1] == f"listener: test_start host={ours.url}"
    assert lines[-1] == "listener: quitting"
    stop = lines[-2].split()
    served = len(ours.seen)
    failed = sum(1 for _, p, _ in ours.seen if p == "/status/404")
    assert stop[:2] == ["listener:", "test_stop"]
    assert stop[2] == f"requests={served}" and stop[3] == f"failed={failed}" and failed > 0
    theirs, locust_text = run_locust("listeners.py", 2, 2, tmp_path)
    assert_same_mix(shares(ours), shares(theirs), within=0.08)


@pytest.mark.slow
def test_csv_rows_per_user_and_pacing(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot("csvdata.py", 3, 3, tmp_path)
    assert code == 0, text
    logins = sorted(json.loads(b[2])["user"] for b in ours.bodies if b[0] == "/login")
    assert logins == ["ann", "bob", "cyd"]
    profiles = Counter(p for _, p, _ in ours.seen if p.startswith("/profile/"))
    assert set(profiles) == {"/profile/ann", "/profile/bob", "/profile/cyd"}
    # constant_pacing(0.01): each user starts a task every 10 ms, ~300 in 3 s (less the ramp).
    for n in profiles.values():
        assert 200 <= n <= 310, profiles
    assert request_stats(summary)["/profile/[user]"]["requests"] == sum(profiles.values())


@pytest.mark.slow
def test_a_load_test_shape_sets_the_users_over_time(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot("shape.py", 1, 30, tmp_path)
    assert code == 0, text
    # The shape's own end (4 s), not -t 30s; 2 users, then 4 (-u 1 set aside): about 12
    # user-seconds at under 100 requests a user-second (constant(0.01) plus the request).
    assert summary["planned_duration_s"] == 4
    walks = sum(1 for _, p, _ in ours.seen if p == "/walk")
    assert 700 <= walks <= 1200, walks


@pytest.mark.slow
def test_loadpilot_run_recognises_a_locustfile(tmp_path: Path) -> None:
    with Recorder.serving() as srv:
        p = subprocess.run(
            [
                str(BIN / "loadpilot"),
                "run",
                str(FILES / "quickstart.py"),
                "--target",
                srv.url,
                "--duration",
                "2s",
                "--out",
                str(tmp_path / "run"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )
        assert p.returncode == 0, p.stderr
        assert "locustfile" in p.stdout
        assert any(path == "/hello" for _, path, _ in srv.seen)


@pytest.mark.slow
def test_open_model_at_a_rate_runs_the_same_tasks(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot("quickstart.py", 2, 2, tmp_path, "--rps", "50")
    assert code == 0, text
    hello = sum(1 for _, p, _ in ours.seen if p == "/hello")
    items = sum(1 for _, p, _ in ours.seen if p.startswith("/item"))
    # 100 iterations: a quarter hello_world, three quarters ten items each.
    assert hello == 25 and items == 750


@pytest.mark.parametrize(
    ("source", "said"),
    [
        (
            "from locust import User, task\n\nclass Raw(User):\n    @task\n    def t(self):\n"
            "        pass\n",
            "locustfile.py:3: Raw is a Locust User with a client of its own",
        ),
        (
            "from locust import HttpUser, MarkovTaskSet, transition\n\n"
            "class Chain(MarkovTaskSet):\n    @transition('nowhere')\n    def a(self):\n"
            "        pass\n",
            "locustfile.py:3: InvalidTransitionError: Transition to nowhere from a is invalid",
        ),
        ("from locust import HttpUser\n", "locustfile.py: no user class"),
        (
            "from locust import HttpUser, task\n\nclass U(HttpUser):\n    @task\n    def t(self):\n"
            "        self.client.get('/', verify=False)\n",
            "locustfile.py:6: get() takes no keyword 'verify'",
        ),
        (
            "from locust import FastHttpUser, task\n\nclass A(FastHttpUser):\n"
            "    network_timeout = 5.0\n    @task\n    def t(self):\n        self.client.get('/')\n"
            "\nclass B(FastHttpUser):\n    network_timeout = 9.0\n    @task\n    def t(self):\n"
            "        self.client.get('/')\n",
            "locustfile.py:9: B.network_timeout = 9.0, but A's is 5.0",
        ),
        (
            "from locust import FastHttpUser, task\n\nclass A(FastHttpUser):\n"
            "    network_timeout = -1\n    @task\n    def t(self):\n        self.client.get('/')\n",
            "locustfile.py:3: invalid A.network_timeout: -1 (must be more than zero)",
        ),
        (
            "from locust import FastHttpUser, task\n\nclass A(FastHttpUser):\n"
            "    max_redirects = 'many'\n    @task\n    def t(self):\n"
            "        self.client.get('/')\n",
            "locustfile.py:3: invalid max_redirects",
        ),
        (
            "from locust import FastHttpUser, task\n\nclass A(FastHttpUser):\n"
            "    max_retries = 2\n    @task\n    def t(self):\n        self.client.get('/')\n",
            "locustfile.py:4: A.max_retries = 2: LoadPilot counts every failed request and "
            "sends none again",
        ),
        (
            "from locust import FastHttpUser, task\n\nclass Base(FastHttpUser):\n"
            "    abstract = True\n    proxy_host = 'proxy.internal'\n    proxy_port = 3128\n\n"
            "class A(Base):\n    @task\n    def t(self):\n        self.client.get('/')\n",
            "locustfile.py:5: A.proxy_host = 'proxy.internal': LoadPilot sends to the run's host "
            "directly",
        ),
        (
            "from locust import HttpUser, task\n\nclass A(HttpUser):\n"
            "    pool_manager: object = object()\n    @task\n    def t(self):\n"
            "        self.client.get('/')\n",
            "locustfile.py:4: A.pool_manager = <object object at",
        ),
    ],
)
def test_what_loadpilot_cannot_run_is_refused_with_file_and_line(
    tmp_path: Path, source: str, said: str
) -> None:
    (tmp_path / "locustfile.py").write_text(source)
    p = locust_cli(
        tmp_path, "-f", "locustfile.py", "-u", "1", "-t", "1s", "-H", "http://127.0.0.1:9"
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert said in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_fast_http_users_timeouts_and_redirects_are_the_runs(tmp_path: Path) -> None:
    import loadpilot as lp

    file = tmp_path / "locustfile.py"
    file.write_text(
        "from locust import FastHttpUser, task\n\n"
        "class Slow(FastHttpUser):\n"
        "    network_timeout = 0.2\n"
        "    connection_timeout = 2\n"
        "    max_redirects = 0\n\n"
        "    @task\n"
        "    def t(self):\n"
        "        self.client.get('/')\n"
    )
    slow = lp.load_locustfile(file, users=2, spawn_rate=100, run_time="1s")
    plan = slow.plan("http://127.0.0.1:9")
    assert (plan.timeout_s, plan.connect_timeout_s, plan.follow_redirects) == (0.2, 2.0, False)
    with lp.start_target(delay_ms=400) as target:
        s = lp.run(slow, tmp_path / "run", target=target.url).summary()
    # Each request waits 0.2 s, as the class says, not LoadPilot's 30.
    assert s.overall.errors_by_kind["timeout"] == s.overall.requests >= 6, s.overall


@pytest.mark.slow
def test_certificates_are_checked_as_each_locust_client_checks_them(tmp_path: Path) -> None:
    import loadpilot as lp

    def file(name: str, base: str, extra: str = "") -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(
            f"from locust import {base}, task\n\nclass U({base}):\n{extra}"
            "    @task\n    def t(self):\n        self.client.get('/json')\n"
        )
        return path

    cases = {
        # FastHttpUser accepts any certificate unless told not to; HttpUser (requests) checks.
        "fast": (file("fast", "FastHttpUser"), 0),
        "fast_checked": (file("fast_checked", "FastHttpUser", "    insecure = False\n"), 1),
        "http": (file("http", "HttpUser"), 1),
    }
    with lp.start_target(tls=True) as target:
        for name, (path, refused) in cases.items():
            sc = lp.load_locustfile(path, users=1, spawn_rate=10, run_time="1s")
            s = lp.run(sc, tmp_path / f"run-{name}", target=target.url).summary()
            assert s.overall.requests > 0, name
            assert (s.overall.errors_by_kind["tls"] == s.overall.requests) == bool(refused), name
            assert (s.overall.errors == 0) == (not refused), name


def test_without_a_host_or_a_run_time_it_says_what_to_give(tmp_path: Path) -> None:
    for args, said in [
        (["-u", "1", "-t", "1s"], "no host: give -H/--host"),
        (["-u", "1", "-H", "http://127.0.0.1:9"], "give a run time"),
    ]:
        p = locust_cli(tmp_path, "-f", str(FILES / "quickstart.py"), *args)
        assert p.returncode == 2 and said in p.stderr, p.stderr


@pytest.mark.slow
def test_a_wait_time_of_the_file_s_own_is_waited_between_tasks(tmp_path: Path) -> None:
    (tmp_path / "own.py").write_text(
        "from locust import HttpUser, task\n\n"
        "class Own(HttpUser):\n"
        "    def wait_time(self):\n"
        "        return 0.1\n\n"
        "    @task\n"
        "    def x(self):\n"
        "        self.client.get('/x')\n"
    )
    with Recorder.serving() as srv:
        p = locust_cli(
            tmp_path, "-f", "own.py", "-u", "1", "-t", "3s", "-H", srv.url, "--out", "run"
        )
        assert p.returncode == 0, p.stdout + p.stderr
        assert "wait_time is the file's own code" in p.stdout
        times = [t for t, _ in srv.arrivals]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Python chose each wait; the engine waited it: a request every ~100 ms.
    assert 20 <= len(gaps) <= 30 and min(gaps) >= 0.095, gaps


def test_gevent_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "locustfile.py").write_text(
        "from locust import HttpUser, task\nimport gevent\n\nclass U(HttpUser):\n"
        "    @task\n    def t(self):\n        self.client.get('/')\n"
    )
    p = locust_cli(tmp_path, "-u", "1", "-t", "1s", "-H", "http://127.0.0.1:9")
    assert (
        p.returncode == 2
        and "locustfile.py:2: ImportError: LoadPilot runs locustfiles without gevent" in p.stderr
    ), p.stderr


@pytest.mark.slow
def test_processes_spread_the_users_over_local_agents_and_merge_exactly(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot("tasksets.py", 4, 3, tmp_path, "--processes", "2")
    assert code == 0, text
    assert "agents: 2" in text
    overall = summary["overall"]
    assert overall["requests"] == len(ours.seen)  # type: ignore[index]
    served = Counter(f"{m} {p}" for m, p, _ in ours.seen)
    for r in summary["requests"]:  # type: ignore[union-attr]
        assert r["requests"] == served[r["name"]], (r["name"], served)
    theirs, _ = run_locust("tasksets.py", 4, 3, tmp_path, "--processes", "2")
    assert_same_mix(shares(ours), shares(theirs), within=0.06)


@pytest.mark.slow
def test_users_are_spawned_at_the_spawn_rate_as_locust_spawns_them(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot(
        "quickstart.py", 6, 6, tmp_path, "-r", "2", "--csv", "lp"
    )
    theirs, _ = run_locust("quickstart.py", 6, 6, tmp_path, "-r", "2")
    assert code == 0, text

    def users(file: str) -> list[int]:
        with open(tmp_path / file) as f:
            return [int(r["User Count"]) for r in csv.DictReader(f)]

    mine, locusts = users("lp_stats_history.csv"), users("locust_stats_history.csv")
    # 2 users a second up to 6: both climb over about 3 s, then hold 6.
    for counts in (mine, locusts):
        assert counts == sorted(counts) and counts[-1] == 6, (mine, locusts)
    reached = [next(i for i, n in enumerate(c) if n == 6) for c in (mine, locusts)]
    assert abs(reached[0] - reached[1]) <= 1 and 2 <= reached[0] <= 3, (mine, locusts)


@pytest.mark.slow
def test_the_file_s_own_options_its_environment_and_its_other_events(tmp_path: Path) -> None:
    (tmp_path / "locustfile.py").write_text(
        """
from locust import HttpUser, constant, events, task

@events.init_command_line_parser.add_listener
def options(parser):
    parser.add_argument("--item", type=int, default=1, include_in_web_ui=True, help="which")

@events.user_error.add_listener
def broke(user_instance, exception, tb, **kw):
    print(f"event: user_error {type(exception).__name__}", flush=True)

@events.quit.add_listener
def quit(exit_code, **kw):
    print(f"event: quit {exit_code}", flush=True)

class U(HttpUser):
    wait_time = constant(0.05)

    @task
    def t(self):
        opts = self.environment.parsed_options
        self.client.get(f"/item/{opts.item}?users={self.environment.runner.user_count}")
        if opts.num_users == 2 and self.environment.runner.user_count == 2:
            raise ValueError("seen")
"""
    )
    with Recorder.serving() as srv:
        p = locust_cli(
            tmp_path,
            "-u",
            "2",
            "-r",
            "20",
            "-t",
            "2s",
            "-H",
            srv.url,
            "--item",
            "7",
            "--out",
            str(tmp_path / "run"),
        )
        paths = [path for _, path, _ in srv.seen]
    assert p.returncode == 1, p.stdout + p.stderr  # the tasks' exceptions are errors
    assert paths and all(path.startswith("/item/7?users=") for path in paths), paths
    assert "/item/7?users=2" in paths
    assert "event: user_error ValueError" in p.stdout
    assert p.stdout.rstrip().endswith("event: quit 1"), p.stdout[-500:]
    # An option nobody adds is refused.
    p = locust_cli(tmp_path, "-u", "1", "-t", "1s", "-H", "http://127.0.0.1:9", "--no-such")
    assert p.returncode == 2 and "unrecognized arguments: --no-such" in p.stderr, p.stderr


@pytest.mark.slow
def test_several_user_classes_share_the_users_by_weight_and_fixed_count(tmp_path: Path) -> None:
    ours, text, summary, code = run_loadpilot("classes.py", 5, 3, tmp_path)
    theirs, _ = run_locust("classes.py", 5, 3, tmp_path)
    assert code == 0, text
    # 1 admin, then 4 users 3:1: each user as busy as the others.
    mine = shares(ours)
    assert mine["GET /admin"] == pytest.approx(0.2, abs=0.04), mine
    assert mine["GET /read"] == pytest.approx(0.6, abs=0.05), mine
    assert_same_mix(mine, shares(theirs), within=0.06)
    # Only the classes named on the command line run.
    only, _, _, _ = run_loadpilot("classes.py", 2, 2, tmp_path / "w", "Writer")
    assert set(shares(only)) == {"POST /write"}


@pytest.mark.slow
def test_a_locustfile_loads_as_a_scenario_in_python(recorder: Recorder, tmp_path: Path) -> None:
    import loadpilot as lp

    shop = lp.load_locustfile(
        FILES / "quickstart.py", users=2, spawn_rate=20, run_time="2s", tags=None
    )
    assert [t.path for t in shop.tasks] == ["engine", "python"]
    assert shop.profile.think_s == 0.005 and shop.profile.think_max_s == 0.015
    run = lp.run(shop, tmp_path / "run", target=recorder.url)
    s = run.summary()
    served = Counter(p.split("?")[0] for _, p, _ in recorder.seen)
    assert s.request("/item").requests == served["/item"] > 0
    with pytest.raises(lp.ScenarioError, match="give a run_time"):
        lp.load_locustfile(FILES / "quickstart.py", users=2)


@pytest.mark.slow
def test_headers_and_auth_set_on_the_client_go_with_every_request(tmp_path: Path) -> None:
    (tmp_path / "locustfile.py").write_text(
        """
from locust import HttpUser, constant, task

class U(HttpUser):
    wait_time = constant(0.02)

    def on_start(self):
        self.client.headers["Authorization"] = "Bearer t-1"

    @task
    def plain(self):
        self.client.get("/plain")

    @task
    def own(self):
        self.client.get("/own", headers={"authorization": "Bearer mine"})

class Basic(HttpUser):
    wait_time = constant(0.02)

    def on_start(self):
        self.client.auth = ("ann", "pw")

    @task
    def b(self):
        self.client.get("/basic")
"""
    )
    for cls, expected in (("U", {"/plain": "Bearer t-1", "/own": "Bearer mine"}),
                          ("Basic", {"/basic": "Basic YW5uOnB3"})):  # fmt: skip
        with Recorder.serving() as srv:
            p = locust_cli(
                tmp_path,
                "-u",
                "2",
                "-t",
                "1s",
                "-H",
                srv.url,
                "--out",
                str(tmp_path / f"run-{cls}"),
                cls,
            )
            assert p.returncode == 0, p.stdout + p.stderr
            # Set at run time: no task can be read into the engine once.
            assert "(weight 1, engine)" not in p.stdout, p.stdout
            seen = {(path, auth) for _, path, auth in srv.seen}
        assert {path for path, _ in seen} == set(expected), seen
        assert all(auth == expected[path] for path, auth in seen), seen


@pytest.mark.slow
def test_a_response_s_elapsed_time_judges_it_as_in_locust_s_docs(tmp_path: Path) -> None:
    (tmp_path / "locustfile.py").write_text(
        """
from locust import HttpUser, constant, task

class U(HttpUser):
    wait_time = constant(0.01)

    @task
    def slow(self):
        with self.client.get("/sleep/60", catch_response=True) as response:
            if response.elapsed.total_seconds() > 0.05:
                response.failure("Request took too long")

    @task
    def quick(self):
        with self.client.get("/quick", catch_response=True) as response:
            if response.elapsed.total_seconds() > 0.05:
                response.failure("Request took too long")
"""
    )
    with Recorder.serving() as srv:
        p = locust_cli(
            tmp_path, "-u", "2", "-t", "2s", "-H", srv.url, "--out", str(tmp_path / "run")
        )
        served = Counter(path for _, path, _ in srv.seen)
    assert p.returncode == 1, p.stdout + p.stderr
    stats = request_stats(json.loads((tmp_path / "run" / "summary.json").read_text()))
    assert stats["GET /sleep/60"]["errors"] == stats["GET /sleep/60"]["requests"]
    assert stats["GET /sleep/60"]["requests"] == served["/sleep/60"] > 0
    assert stats["GET /quick"]["errors"] == 0 and stats["GET /quick"]["requests"] > 0
