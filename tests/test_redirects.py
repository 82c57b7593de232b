"""Redirects, followed as requests and k6 follow them: on both paths, counted as one request
with its hops, across origins, bounded, and never to a host the run may not send to."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from conftest import constant

import loadpilot as lp
from loadpilot import _engine
from loadpilot.scenarios.loader import load_scenario

LOGIN = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(rps=20, duration="1s"))
class Login(lp.VUser):
    @lp.task
    def engine_login(self):
        # 302 to /cookies, which shows the cookies sent: the one set on the way is kept.
        self.client.post("/cookies/set?sid=e1&next=/cookies", data={"u": "x"}, name="login",
                         expect=lp.expect(status=200, body_contains="sid=e1"))

    @lp.task
    def python_login(self):
        r = self.client.post("/cookies/set?sid=p1&next=/cookies", data={"u": "x"}, name="login")
        assert (r.status_code, r.text, r.redirects) == (200, "sid=p1", 1), (r, r.text)
        assert r.url.endswith("/cookies"), r.url
        r = self.client.get("/redirect/3", follow_redirects=False)
        assert (r.status_code, r.redirects, r.url) == (302, 0, None)
        assert r.headers["location"] == "/redirect/2"
        r = self.client.get("/redirect/3", max_redirects=2, name="too far")
"""


def _scenario(tmp_path: Path, text: str, name: str) -> Path:
    f = tmp_path / name
    f.write_text(textwrap.dedent(text))
    return f


def test_both_paths_follow_redirects_keep_cookies_and_count_hops(tmp_path: Path, out: Path) -> None:
    sc = load_scenario(_scenario(tmp_path, LOGIN, "login.py"), None)
    assert sc.paths == {"engine_login": "engine", "python_login": "python"}
    with lp.start_target() as target:
        s = lp.run(sc, out, target=target.url).summary()
        served = target.served_by_path
    logins = served["/cookies/set"]
    assert logins == 20 and served["/cookies"] == 20
    by = {(r.task, r.name): r for r in s.requests}
    # A POST answered 302 went on as a GET to /cookies, with the cookie set on the way: one
    # request each, one hop each.
    for task in ("engine_login", "python_login"):
        login = by[(task, "login")]
        assert (login.requests, login.errors, login.redirects) == (10, 0, 10), login
    # Not followed: the 302 itself is the answer. Followed too far: an error of its own kind.
    assert by[("python_login", "GET /redirect/3")].redirects == 0
    far = by[("python_login", "too far")]
    assert far.errors_by_kind["redirect"] == far.requests == 10
    assert served["/redirect/3"] == 20 and served["/redirect/2"] == 10
    assert served["/redirect/1"] == 10 and "/redirect/0" not in served
    (line,) = [f for f in s.failures if f.request == "too far"]
    assert line.message == (
        f"too many redirects (more than 2): {target.url}/redirect/3 -> /redirect/2 -> /redirect/1"
        " -> /redirect/0"
    )
    # The hops of a chain that failed are in the server's counts, not among those followed.
    assert s.overall.errors == 10 and s.overall.redirects == 20


def _hop_plan(url: str, to: str, **request: object) -> lp.Plan:
    return lp.Plan(
        target=url,
        load=constant(10, 1),
        tasks=[
            lp.Task(
                name="hop",
                requests=[lp.Request(path=f"/redirect-to?url={to}&status=307", **request)],
            )
        ],
    )


def test_a_hop_to_another_origin_goes_on_its_own_connection(out: Path) -> None:
    with lp.start_target() as target, lp.start_target() as other:
        to = f"http://localhost:{other.port}/anything"
        s = lp.run(_hop_plan(target.url, to, method="PUT", body="kept"), out).summary()
        assert s.overall.errors == 0 and s.overall.redirects == 10
        assert other.served_by_path == {"/anything": 10}
        assert target.served_by_path == {"/redirect-to": 10}


def test_a_plan_that_does_not_follow_redirects_counts_the_redirect_as_the_answer(
    out: Path,
) -> None:
    with lp.start_target() as target:
        plan = _hop_plan(target.url, "/anything").model_copy(update={"follow_redirects": False})
        s = lp.run(plan, out).summary()
        assert (s.overall.requests, s.overall.errors, s.overall.redirects) == (10, 0, 0)
        assert target.served_by_path == {"/redirect-to": 10}


@pytest.mark.parametrize("where", ["plan", "request"])
@pytest.mark.parametrize("max_redirects", [-1, 101])
def test_a_redirect_bound_out_of_range_is_refused_where_it_is(
    where: str, max_redirects: int
) -> None:
    data = _hop_plan("http://127.0.0.1:1", "/x").model_dump(by_alias=True, exclude_none=True)
    if where == "plan":
        data["max_redirects"] = max_redirects
        at = "max_redirects"
    else:
        data["tasks"][0]["requests"][0]["max_redirects"] = max_redirects
        at = "tasks[0].requests[0].max_redirects"
    text = json.dumps(data)
    with pytest.raises(ValueError, match=re.escape(at)):
        lp.Plan.from_json(text)
    # The engine refuses it too: out of range by its field, negative (not a count) by where it
    # stands in the text.
    where_in_text = re.escape(at) if max_redirects > 0 else "line 1 column"
    with pytest.raises((lp.PlanError, ValueError), match=where_in_text):
        _engine.validate_plan(text)


def test_a_scenario_says_how_far_its_requests_follow_redirects(tmp_path: Path) -> None:
    with pytest.raises(lp.ScenarioError, match="max_redirects"):
        lp.scenario(profile=lp.constant(rps=1, duration="1s"), max_redirects=101)
    f = _scenario(
        tmp_path,
        """
        import loadpilot as lp

        @lp.scenario(profile=lp.constant(rps=1, duration="1s"), follow_redirects=False)
        class S(lp.VUser):
            @lp.task
            def t(self):
                self.client.get("/a")
                self.client.get("/b", follow_redirects=True, max_redirects=3)
        """,
        "s.py",
    )
    plan = load_scenario(f, None).plan("http://127.0.0.1:1")
    assert (plan.follow_redirects, plan.max_redirects) == (False, 10)
    a, b = plan.tasks[0].requests
    assert (a.follow_redirects, a.max_redirects) == (None, None)
    assert (b.follow_redirects, b.max_redirects) == (True, 3)


@pytest.mark.slow
def test_an_agent_follows_no_redirect_outside_its_allow_list(tmp_path: Path) -> None:
    with lp.start_target() as target, lp.start_target() as other:
        # The agents here allow the target's host (127.0.0.1); localhost is another host.
        to = f"http://localhost:{other.port}/x"
        r = lp.start(_hop_plan(target.url, to), tmp_path / "run", agents=1)
        assert r.wait(timeout_s=60)
        s = r.summary()
        assert s.overall.errors_by_kind["redirect"] == s.overall.requests == 10
        assert other.served == 0, "nothing was sent outside the allow-list"
        (line,) = s.failures
        assert "refused: not an allowed target (allowed: 127.0.0.1)" in line.message
        # The same plan run here, with no allow-list, goes there.
        s = lp.run(_hop_plan(target.url, to), tmp_path / "local").summary()
        assert s.overall.errors == 0 and other.served == 10
