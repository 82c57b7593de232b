"""``loadpilot serve``: runs driven over HTTP (FastAPI), safe by default.

Plans come in as JSON (the form of ``lp.Plan``, validated by its pydantic model: a 422 names the
field). One run at a time (409 while one goes). Every endpoint but ``/healthz`` wants the bearer
token when one is set; the server refuses to bind anything but loopback without one. Caps on rate,
duration and users, an allow-list of target hosts (loopback by default) and a body size limit are
checked before anything is sent. Scenario code (Python) is refused unless the server was started
with ``allow_code``. Runs are ordinary runs: their directories are written as for any run, their
rows are streamed as they close, and a client going away changes nothing for the run.
"""

import asyncio
import hmac
import json
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from loadpilot.allowlist import target_allowed
from loadpilot.errors import LoadPilotError
from loadpilot.exporter import RunMetrics
from loadpilot.launch import start
from loadpilot.plan import ClosedLoad, OpenLoad, Plan
from loadpilot.profiles import shape
from loadpilot.running.runs import LoadedRun, Run


@dataclass
class Limits:
    """What a plan sent to the server may ask for."""

    max_rate: float = 10_000.0
    max_duration_s: float = 3600.0
    max_users: int = 10_000
    max_body_bytes: int = 1 << 20
    allow_targets: list[str] = field(default_factory=list)
    allow_code: bool = False


class Created(BaseModel):
    id: str
    path: str


class RunInfo(BaseModel):
    id: str
    name: str
    state: str = Field(description="running or finished")
    path: str
    summary: dict[str, Any] | None = Field(
        default=None, description="summary.json once finished; the seconds closed so far before"
    )


class ScenarioSource(BaseModel):
    """A scenario file's source (Python: refused unless the server allows code)."""

    scenario: str = Field(description="the text of a scenario file (.py)")
    target: str
    name: str | None = Field(default=None, description="which scenario of the file")


class Problem(BaseModel):
    detail: str


# Refusals are JSON whatever the endpoint's own content type.
_PROBLEM: dict[str, Any] = {"model": Problem, "content": {"application/json": {}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_PROBLEM, "description": "The body is not JSON"},
    401: {**_PROBLEM, "description": "No or wrong bearer token"},
    403: {**_PROBLEM, "description": "Beyond this server's caps, allow-list or code policy"},
    404: {**_PROBLEM, "description": "No such run"},
    409: {**_PROBLEM, "description": "A run is going (one at a time), or the run is not over"},
    413: {**_PROBLEM, "description": "The body is too large"},
    422: {"description": "Validation Error", "content": {"application/json": {}}},
}


def check_plan(plan: Plan, limits: Limits) -> None:
    """Refuses (403) a plan beyond the server's caps or for a target it does not allow."""
    if not target_allowed(plan.target, limits.allow_targets):
        allowed = ", ".join(limits.allow_targets or ["loopback"])
        raise HTTPException(403, f"target {plan.target} is not allowed here (allowed: {allowed})")
    if plan.file_paths() and not limits.allow_code:
        raise HTTPException(
            403,
            f"the plan uploads files from this server's disk ({', '.join(plan.file_paths())}); "
            "only a server started with --allow-code reads local files",
        )
    if plan.duration_s > limits.max_duration_s:
        raise HTTPException(
            403,
            f"the plan runs {plan.duration_s:g} s; this server allows {limits.max_duration_s:g} s",
        )
    peak = shape(plan.load.stages).peak
    if isinstance(plan.load, OpenLoad) and peak > limits.max_rate:
        raise HTTPException(
            403, f"the plan asks for {peak:g} requests/s; this server allows {limits.max_rate:g}"
        )
    if isinstance(plan.load, ClosedLoad) and peak > limits.max_users:
        raise HTTPException(
            403, f"the plan asks for {peak:g} users; this server allows {limits.max_users}"
        )


class Server:
    """The runs of one server process: the last ``keep_runs`` finished runs (and the one
    going) in memory and in its Prometheus metrics; older ones on disk only, read back when
    asked for."""

    def __init__(
        self, runs_dir: Path, limits: Limits, agents: Any = None, keep_runs: int = 20
    ) -> None:
        self.runs_dir = runs_dir
        self.limits = limits
        self.agents = agents
        self.keep_runs = keep_runs
        self.runs: dict[str, Run] = {}
        self.metrics = RunMetrics()
        self._lock = threading.Lock()

    def active(self) -> str | None:
        for rid, r in self.runs.items():
            if not r.done:
                return rid
        return None

    def begin(self, what: Plan | Any, plan: Plan, target: str | None = None) -> tuple[str, Run]:
        """Starts ``what`` (a plan, or a scenario whose plan is ``plan``) once ``plan`` is within
        this server's caps and allow-list; 409 while another run goes."""
        if what is plan and plan.python():
            raise HTTPException(422, "a plan with Python parts runs from its scenario source")
        check_plan(plan, self.limits)
        with self._lock:
            busy = self.active()
            if busy is not None:
                raise HTTPException(409, f"run {busy} is going; one run at a time (stop it first)")
            rid = uuid.uuid4().hex[:12]
            try:
                run = start(
                    what,
                    self.runs_dir / rid,
                    target=target,
                    agents=self.agents,
                    allow_hosts=list(self.limits.allow_targets),
                )
            except LoadPilotError as e:
                raise HTTPException(422, str(e)) from None
            self.runs[rid] = run
            self.metrics.watch(run, rid)
            self._forget()
            return rid, run

    def tidy(self) -> None:
        """Lets go of finished runs beyond the newest ``keep_runs`` (as runs start and end,
        and before the runs are listed or exported)."""
        with self._lock:
            self._forget()

    def _forget(self) -> None:
        finished = [rid for rid, r in self.runs.items() if r.done]
        for rid in finished[: max(0, len(finished) - self.keep_runs)]:
            del self.runs[rid]
            self.metrics.forget(rid)

    def get(self, rid: str) -> Run | LoadedRun:
        """A run of this server: in memory, or read back from its directory."""
        run = self.runs.get(rid)
        if run is not None:
            return run
        path = self.runs_dir / rid
        if not rid.isalnum() or not (path / "plan.json").is_file():
            raise HTTPException(404, f"no run {rid}")
        try:
            return LoadedRun(path)
        except LoadPilotError as e:
            raise HTTPException(404, f"run {rid}: {e}") from None

    def info(self, rid: str) -> RunInfo:
        run = self.get(rid)
        if isinstance(run, Run) and not run.done:
            s, state = run.summary_so_far(), "running"
        else:
            s, state = run.summary(), "finished"
        return RunInfo(
            id=rid,
            name=run.plan.name,
            state=state,
            path=str(run.path),
            summary=json.loads(s.model_dump_json()),
        )


async def _rows(run: Run | LoadedRun, every_s: float = 0.25) -> AsyncIterator[bytes]:
    """The run's rows as newline-delimited JSON, each as its second closes, then the summary.
    The run goes on whatever the client does."""
    sent = 0
    while True:
        done = run.done if isinstance(run, Run) else True
        if isinstance(run, Run):
            new, sent = run._rows_after(sent)  # tasks' rows and request names'
        else:
            new = run._rows
        if new.height:
            yield new.with_columns(new["time"].dt.epoch("us") / 1e6).write_ndjson().encode()
        if done:
            break
        await asyncio.sleep(every_s)
    s = await asyncio.to_thread(run.summary)
    yield (json.dumps({"summary": json.loads(s.model_dump_json())}) + "\n").encode()


def create_app(
    runs_dir: Path | None = None,
    *,
    token: str | None = None,
    limits: Limits | None = None,
    agents: Any = None,
    keep_runs: int = 20,
) -> FastAPI:
    limits = limits or Limits()
    runs_dir = runs_dir or Path(tempfile.mkdtemp(prefix="loadpilot-serve-"))
    server = Server(runs_dir, limits, agents, keep_runs)
    app, auth = _app(token, limits)
    _health_routes(app, server, auth)
    _run_routes(app, server, limits, auth)
    app.state.server = server
    return app


def _app(token: str | None, limits: Limits) -> tuple[FastAPI, list[Any]]:
    """The app with its safety: every route but /healthz behind the bearer token (what
    ``auth`` adds to a route), bodies bounded, the OpenAPI document behind the token too."""
    # The OpenAPI document is served behind the token like everything but /healthz; no
    # browsable docs page (it would load its scripts from a CDN).
    app = FastAPI(
        title="LoadPilot",
        description="Load tests driven over HTTP: plans in, rows and summaries out.",
        version="1",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False)

    def authorized(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if token is None:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a bearer token is needed", {"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorized)]

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            return JSONResponse(
                {"detail": f"the body is over {limits.max_body_bytes} bytes"}, status_code=413
            )
        return await call_next(request)

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    def openapi() -> JSONResponse:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
        return JSONResponse(app.openapi_schema)

    return app, auth


def _health_routes(app: FastAPI, server: Server, auth: list[Any]) -> None:
    """Liveness, readiness and the Prometheus metrics of the server's runs."""

    @app.get("/healthz", summary="The server is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", dependencies=auth, responses=_ERRORS, summary="Ready for a run")
    def readyz() -> dict[str, Any]:
        busy = server.active() is not None
        return {"ready": not busy, "busy": busy}

    @app.get("/metrics", dependencies=auth, responses=_ERRORS, response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        server.tidy()
        return PlainTextResponse(
            generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )


def _run_routes(app: FastAPI, server: Server, limits: Limits, auth: list[Any]) -> None:
    """Runs: started from a plan or (allowed) scenario source, listed, stopped, their rows
    streamed and their report."""

    @app.post("/runs", status_code=201, dependencies=auth, responses=_ERRORS)
    def create_run(plan: Plan) -> Created:
        """Starts a plan; 409 while another run goes."""
        rid, run = server.begin(plan, plan)
        return Created(id=rid, path=str(run.path))

    @app.post("/scenarios", status_code=201, dependencies=auth, responses=_ERRORS)
    def create_scenario_run(body: ScenarioSource) -> Created:
        """Starts a scenario from its source (Python code): only on a server started with
        ``--allow-code``."""
        if not limits.allow_code:
            raise HTTPException(
                403, "this server runs plans only; scenario code needs a server started with "
                "--allow-code",
            )  # fmt: skip
        from loadpilot.scenarios.loader import load_scenario

        work = Path(tempfile.mkdtemp(prefix="loadpilot-scenario-"))
        (work / "scenario.py").write_text(body.scenario)
        try:
            scenario = load_scenario(work / "scenario.py", body.name)
            plan = scenario.plan(body.target)
        except LoadPilotError as e:
            raise HTTPException(422, str(e)) from None
        rid, run = server.begin(scenario, plan, target=body.target)
        return Created(id=rid, path=str(run.path))

    @app.get("/runs", dependencies=auth, responses=_ERRORS)
    def list_runs() -> list[RunInfo]:
        """The runs kept in memory (``--keep-runs``); older ones by their id."""
        server.tidy()
        return [server.info(rid) for rid in list(server.runs)]

    @app.get("/runs/{run_id}", dependencies=auth, responses=_ERRORS)
    def get_run(run_id: str) -> RunInfo:
        return server.info(run_id)

    @app.post("/runs/{run_id}/stop", status_code=202, dependencies=auth, responses=_ERRORS)
    def stop_run(run_id: str) -> RunInfo:
        run = server.get(run_id)
        if isinstance(run, Run) and not run.done:
            run.stop()
        return server.info(run_id)

    @app.get(
        "/runs/{run_id}/metrics",
        dependencies=auth,
        responses=_ERRORS,
        response_class=StreamingResponse,
        summary="Rows as newline-delimited JSON, one per task per closed second, then the summary",
    )
    def run_metrics(run_id: str) -> StreamingResponse:
        return StreamingResponse(_rows(server.get(run_id)), media_type="application/x-ndjson")

    @app.get(
        "/runs/{run_id}/report", dependencies=auth, responses=_ERRORS, response_class=HTMLResponse
    )
    def run_report(run_id: str) -> HTMLResponse:
        run = server.get(run_id)
        if isinstance(run, Run) and not run.done:
            raise HTTPException(409, f"run {run_id} is still going")
        from loadpilot.analysis.reporting import report

        path = report(run, Path(run.path) / "report.html")
        return HTMLResponse(path.read_text())

    @app.post(
        "/run",
        dependencies=auth,
        responses=_ERRORS,
        response_class=StreamingResponse,
        summary="Runs a plan and streams its rows, then its summary (409 while a run goes)",
    )
    def run_and_stream(plan: Plan) -> StreamingResponse:
        _, run = server.begin(plan, plan)
        return StreamingResponse(_rows(run), media_type="application/x-ndjson")
