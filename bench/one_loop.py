"""What the one engine loop costs, and what it buys: requests per second in one process on one
engine thread, closed model, users looping with no think time, against the built-in target (its
own process, one thread), variants alternated round by round:

- ``engine``: a task of one plain GET (compiled, run in the engine);
- ``python``: the same GET from an ``async def`` task (the body runs in Python when the engine
  asks, as an asyncio task);
- ``python_def``: the same GET from a plain ``def`` task with a line of Python after it (run as
  the user's greenlet);
- ``constant_header``: the engine task with a fixed ``Authorization`` header;
- ``on_start_token``: the same task with ``Authorization: Bearer {{token}}``, the token set per
  user by a Python ``on_start`` (a login against ``/echo``).

Goals: ``on_start_token / constant_header >= 0.9`` and ``python / engine >= 0.6`` (medians; the
same figure is given for ``python_def``).
Results go to ``bench/results/one-loop-<date>.json``.

    python bench/one_loop.py [--users 32] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

from engine import Target, run_scenario_program, spread, write_results

_SCENARIOS = {
    "engine": """
    @lp.task
    def get(self):
        self.client.get("/")
""",
    "python": """
    @lp.task
    async def get(self):
        await self.client.get("/")
""",
    "python_def": """
    @lp.task
    def get(self):
        r = self.client.get("/")
        self.status = r.status_code
""",
    "constant_header": """
    @lp.task
    def get(self):
        self.client.get("/", headers={"Authorization": "Bearer fixed-token"})
""",
    "on_start_token": """
    def on_start(self):
        self.token = self.client.post("/echo", content="token-" + str(id(self))).text

    @lp.task
    def get(self):
        self.client.get("/", headers={"Authorization": "Bearer {{token}}"})
""",
}

_PROGRAM = """
import json, sys, loadpilot as lp
url, users, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

@lp.scenario(profile=lp.users(users, seconds))
class User(lp.VUser):
{body}

s = lp.run(User, out, target=url).summary()
t = s.task("get")
print(json.dumps({{"requests": t.requests, "errors": t.errors, "rps": t.achieved_rps,
                  "path": t.path}}))
"""


def run_variant(name: str, url: str, users: int, seconds: float) -> dict[str, float]:
    r = run_scenario_program(_PROGRAM.format(body=_SCENARIOS[name]), url, users, seconds)
    expected = "python" if name.startswith("python") else "engine"
    assert r.pop("path") == expected, (name, expected)
    assert r["errors"] == 0, (name, r)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    target = Target(threads=1)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in _SCENARIOS}
    try:
        for _ in range(args.rounds):
            for name in _SCENARIOS:
                runs[name].append(run_variant(name, target.url, args.users, args.seconds))
    finally:
        target.close()
    summary = {
        name: {k: spread([r[k] for r in rs]) for k in ("rps", "cpu_s_per_10k")}
        for name, rs in runs.items()
    }

    def median(name: str) -> float:
        return float(summary[name]["rps"]["median"])

    ratios = {
        "on_start_token_over_constant_header": median("on_start_token") / median("constant_header"),
        "python_over_engine": median("python") / median("engine"),
        "python_def_over_engine": median("python_def") / median("engine"),
    }
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "users": args.users,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
    }
    print(json.dumps(summary, indent=2))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    write_results("one-loop", report)


if __name__ == "__main__":
    main()
