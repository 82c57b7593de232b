"""The Helm chart (deploy/helm/loadpilot), proved without a cluster: rendered by Helm itself
(helm-python-sdk bundles it) for the defaults and the combinations users install, linted
strictly, every manifest validated by kubernetes-validate --strict (the ServiceMonitor, a custom
resource kubernetes-validate has no schema for, against the Prometheus Operator's models), wired
consistently (secrets, selectors, ports, URLs), refusing wrong values with the schema's message;
and the commands the chart renders run for real: the bundled NATS's configuration in a real
nats-server, the agent and coordinator containers' arguments and environment as `loadpilot`
processes, a run through them, the helm test pod's check."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

import loadpilot as lp
from loadpilot.cluster.server import free_port, nats_server_binary

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "loadpilot"
DASHBOARD = ROOT / "deploy" / "grafana" / "loadpilot.json"
KUBERNETES = "1.34.0"  # a current release; kubernetes-validate ships its schemas

helm.disable_logging()

Manifest = dict[str, Any]

COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "coordinator+monitoring": {
        "coordinator": {"enabled": True},
        "monitoring": {"enabled": True, "serviceMonitor": {"labels": {"release": "prom"}}},
        "agent": {"replicas": 10, "allowTargets": ["127.0.0.2:8080"]},
    },
    "monitoring without coordinator": {"monitoring": {"enabled": True}},
    "external NATS": {
        "nats": {"enabled": False},
        "externalNats": {
            "url": "tls://127.0.0.1:4222",
            "credsSecret": "loadpilot-nats-creds",
            "tlsCASecret": "messaging-ca",
            "tlsClientSecret": "loadpilot-nats-client",
        },
        "coordinator": {"enabled": True, "persistence": {"existingClaim": "loadpilot-runs"}},
    },
    "existing secrets": {
        "global": {"natsAuth": {"existingSecret": "nats-auth", "key": "nats-token"}},
        "coordinator": {
            "enabled": True,
            "token": {"existingSecret": "api-auth", "key": "bearer"},
            "agentsPerRun": 1,
        },
        "monitoring": {"enabled": True},
        "agent": {"allowCode": True, "podDisruptionBudget": {"enabled": False}},
    },
}


def render(values: dict[str, Any], name: str = "lp", namespace: str = "load") -> dict[str, str]:
    chart = helm.Chart.load(str(CHART))
    try:
        return dict(chart.render(values, name=name, namespace=namespace, is_install=True))
    finally:
        chart.close()


def manifests(rendered: dict[str, str]) -> list[Manifest]:
    out = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        out += [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def find(docs: list[Manifest], kind: str, name_suffix: str = "") -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]


def one(docs: list[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = find(docs, kind, name_suffix)
    assert len(found) == 1, (kind, name_suffix, [d["metadata"]["name"] for d in found])
    return found[0]


def kubernetes_validate(*files: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("kubernetes-validate") or str(
        Path(sys.executable).parent / "kubernetes-validate"
    )
    return subprocess.run(
        [exe, "--strict", "--quiet", "-k", KUBERNETES, *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def pod_spec(doc: Manifest) -> Manifest:
    spec: Manifest = doc["spec"]["template"]["spec"] if doc["kind"] != "Pod" else doc["spec"]
    return spec


# -- rendering, lint, schemas -----------------------------------------------------------------


def test_the_chart_lints_clean_with_its_subchart() -> None:
    for values in COMBINATIONS.values():
        report = helm.lint(
            str(CHART), values, strict=True, with_subcharts=True, kube_version=f"v{KUBERNETES}"
        )
        assert report["errors"] == [], report
        # Severity 1 is information (helm's "icon is recommended"); 2 and 3 would fail --strict.
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_every_manifest_validates_against_kubernetes(combination: str, tmp_path: Path) -> None:
    docs = manifests(render(COMBINATIONS[combination]))
    builtin = [d for d in docs if d["apiVersion"] != "monitoring.coreos.com/v1"]
    files: list[Path] = []
    for i, doc in enumerate(builtin):
        f = tmp_path / f"{i:02d}-{doc['kind']}.yaml"
        f.write_text(yaml.safe_dump(doc))
        files.append(f)
    done = kubernetes_validate(*files)
    assert done.returncode == 0, done.stdout + done.stderr
    # A custom resource: checked against the Prometheus Operator's published schema as the
    # cloudcoil models carry it; nothing may be dropped as unknown (strict).
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    for doc in find(docs, "ServiceMonitor"):
        model = ServiceMonitor.model_validate(doc)
        assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == doc


def test_a_broken_manifest_is_refused_by_the_same_checks(tmp_path: Path) -> None:
    docs = manifests(render({}))
    agent = one(docs, "Deployment", "-agent")
    pod_spec(agent)["containers"][0]["readinessProbe"]["httpGett"] = {"port": "health"}
    f = tmp_path / "agent.yaml"
    f.write_text(yaml.safe_dump(agent))
    done = kubernetes_validate(f)
    assert done.returncode != 0 and "httpGett" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"agent": {"replicas": -1}}, "at '/agent/replicas': minimum: got -1, want 0"),
        ({"agent": {"image": {"tag": None}}}, "at '/agent/image': missing property 'tag'"),
        ({"agent": {"image": {"tag": ""}}}, "at '/agent/image/tag': minLength"),
        ({"agents": {"replicas": 3}}, "additional properties 'agents' not allowed"),
        ({"agent": {"replica": 3}}, "at '/agent': additional properties 'replica' not allowed"),
        ({"coordinator": {"enabled": True, "maxDuration": "ten"}}, "/coordinator/maxDuration"),
        ({"agent": {"image": {"pullPolicy": "Sometimes"}}}, "/agent/image/pullPolicy"),
        ({"nats": {"enabled": False}}, "at '/externalNats/url': minLength: got 0, want 1"),
        ({"externalNats": {"url": "http://127.0.0.1:4222"}}, "/externalNats/url"),
    ],
)
def test_wrong_values_fail_with_the_schemas_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as e:
        render(values)
    assert message in str(e.value), str(e.value)


# -- wiring -------------------------------------------------------------------------------------


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_what_the_pods_reference_exists_and_matches(combination: str) -> None:
    values = COMBINATIONS[combination]
    docs = manifests(render(values))
    secrets = {d["metadata"]["name"]: d for d in find(docs, "Secret")}
    existing = {"nats-auth": "nats-token", "api-auth": "bearer"}
    workloads = find(docs, "Deployment") + find(docs, "StatefulSet") + find(docs, "Pod")
    claims = {"loadpilot-runs"}
    for w in workloads:
        spec = pod_spec(w)
        pod_labels = w["spec"]["template"]["metadata"]["labels"] if w["kind"] != "Pod" else {}
        if w["kind"] != "Pod":
            assert w["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    continue
                if ref["name"] in secrets:
                    assert ref["key"] in secrets[ref["name"]]["data"], (w["metadata"]["name"], ref)
                else:
                    assert existing.get(ref["name"]) == ref["key"], (w["metadata"]["name"], ref)
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or any(
                    t["metadata"]["name"] == m["name"]
                    for t in w["spec"].get("volumeClaimTemplates", [])
                ), (w["metadata"]["name"], m)
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                p = c.get(probe)
                if p is not None:
                    action = p.get("httpGet") or p.get("tcpSocket")
                    assert action["port"] in ports, (w["metadata"]["name"], probe)
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
    # LoadPilot's own workloads, each hardened: the agents, the coordinator when enabled and
    # the helm test pod (the bundled NATS is the subchart's).
    coordinator_on = values.get("coordinator", {}).get("enabled", False)
    ours = [w for w in workloads if w["metadata"]["name"].startswith("lp-loadpilot-")]
    assert {w["metadata"]["name"] for w in ours} == {
        "lp-loadpilot-agent", "lp-loadpilot-test",
    } | ({"lp-loadpilot-coordinator"} if coordinator_on else set())  # fmt: skip
    for w in ours:
        assert w["metadata"]["labels"]["app.kubernetes.io/part-of"] == "loadpilot"
        spec = pod_spec(w)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            # Tokens come from Secrets through the environment, never on a command line.
            assert "--token" not in c.get("args", []), w["metadata"]["name"]
            for s in secrets.values():
                for v in s.get("data", {}).values():
                    assert base64.b64decode(v).decode() not in " ".join(c.get("args", []))
    # Agents are disrupted one at a time, unless the budget is turned off.
    agent = one(docs, "Deployment", "-agent")
    if values.get("agent", {}).get("podDisruptionBudget", {}).get("enabled", True):
        pdb = one(docs, "PodDisruptionBudget", "-agent")
        assert pdb["spec"]["selector"] == agent["spec"]["selector"]
        assert pdb["spec"]["maxUnavailable"] == 1
    else:
        assert find(docs, "PodDisruptionBudget", "-agent") == []
    if not coordinator_on:
        assert find(docs, "Service", "-coordinator") == find(docs, "ServiceMonitor") == []
    else:
        svc = one(docs, "Service", "-coordinator")
        coord = one(docs, "Deployment", "-coordinator")
        # One coordinator, never two at once (a run's state lives in its process).
        assert coord["spec"]["replicas"] == 1
        assert coord["spec"]["strategy"] == {"type": "Recreate"}
        labels = coord["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        named = {p["name"] for p in pod_spec(coord)["containers"][0]["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= named
        monitors = find(docs, "ServiceMonitor")
        assert len(monitors) == int(values.get("monitoring", {}).get("enabled", False))
        for sm in monitors:
            assert (
                sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
            )
            assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
            assert sm["spec"]["endpoints"][0]["interval"] == "15s"
            cred = sm["spec"]["endpoints"][0]["authorization"]["credentials"]
            token_env = pod_spec(coord)["containers"][0]["env"][0]
            assert token_env["name"] == "LOADPILOT_TOKEN"
            assert cred == {
                "name": token_env["valueFrom"]["secretKeyRef"]["name"],
                "key": token_env["valueFrom"]["secretKeyRef"]["key"],
            }
    # Every client speaks to the NATS this release has: the bundled one's Service, or the URL.
    urls = {arg_after(c["args"], "--nats") for w in workloads for c in pod_spec(w)["containers"]
            if "--nats" in c.get("args", [])}  # fmt: skip
    if values.get("nats", {}).get("enabled", True):
        nats_svc = one(docs, "Service", "-nats")
        port = next(p["port"] for p in nats_svc["spec"]["ports"] if p["name"] == "nats")
        assert urls == {f"nats://{nats_svc['metadata']['name']}.load.svc:{port}"}
        nats_env = {
            e["name"]: e for e in pod_spec(one(docs, "StatefulSet"))["containers"][0]["env"]
        }
        agent_env = {
            e["name"]: e
            for e in pod_spec(one(docs, "Deployment", "-agent"))["containers"][0]["env"]
        }
        # The server and its clients read the token from the same Secret and key.
        assert nats_env["NATS_TOKEN"]["valueFrom"] == agent_env["LOADPILOT_NATS_TOKEN"]["valueFrom"]
    else:
        assert urls == {values["externalNats"]["url"]}
        assert not find(docs, "StatefulSet")


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_a_coordinator_without_agents_fails_with_a_message() -> None:
    with pytest.raises(helm.HelmRenderError) as e:
        render({"coordinator": {"enabled": True}, "agent": {"replicas": 0}})
    assert "agent.replicas (or coordinator.agentsPerRun) must be at least 1" in str(e.value)


def test_existing_secrets_are_used_and_none_are_made() -> None:
    docs = manifests(render(COMBINATIONS["existing secrets"]))
    assert find(docs, "Secret") == []
    agent = pod_spec(one(docs, "Deployment", "-agent"))["containers"][0]
    assert "--allow-code" in agent["args"]
    assert find(docs, "PodDisruptionBudget", "-agent") == []
    coord = pod_spec(one(docs, "Deployment", "-coordinator"))["containers"][0]
    assert arg_after(coord["args"], "--external-agents") == "1"


def test_generated_secrets_hold_fresh_tokens() -> None:
    a, b = (manifests(render({"coordinator": {"enabled": True}})) for _ in range(2))
    for suffix in ("-nats-token", "-coordinator"):
        ta, tb = (base64.b64decode(one(d, "Secret", suffix)["data"]["token"]) for d in (a, b))
        assert len(ta) == 40 and ta != tb


@pytest.mark.parametrize("component", ["-agent", "-coordinator"])
def test_the_external_nats_credentials_are_mounted_where_loadpilot_reads_them(
    component: str,
) -> None:
    """Agents and the coordinator (`loadpilot serve`, which takes the same flags) alike."""
    docs = manifests(render(COMBINATIONS["external NATS"]))
    spec = pod_spec(one(docs, "Deployment", component))
    c = spec["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for flag, secret in (
        ("--creds", "loadpilot-nats-creds"),
        ("--tls-ca", "messaging-ca"),
        ("--tls-cert", "loadpilot-nats-client"),
        ("--tls-key", "loadpilot-nats-client"),
    ):
        path = Path(arg_after(c["args"], flag))
        assert volumes[mounts[str(path.parent)]]["secret"]["secretName"] == secret
    # The flags are the command's own (its parser accepts them).
    from loadpilot.cli import _parser

    assert c["args"][0] == ("agent" if component == "-agent" else "serve")
    _parser().parse_args(c["args"])
    # No token for an external server unless a Secret is named.
    assert "LOADPILOT_NATS_TOKEN" not in {e["name"] for e in c.get("env", [])}


def test_monitoring_ships_the_dashboard_for_grafanas_sidecar() -> None:
    docs = manifests(render(COMBINATIONS["coordinator+monitoring"]))
    cm = one(docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["loadpilot.json"]) == json.loads(DASHBOARD.read_text())
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    # Without a coordinator there is nothing of LoadPilot's to scrape: the dashboard only.
    docs = manifests(render(COMBINATIONS["monitoring without coordinator"]))
    assert find(docs, "ServiceMonitor") == [] and find(docs, "ConfigMap", "-dashboard")
    assert not [d for d in manifests(render({})) if d["kind"] in ("ServiceMonitor", "ConfigMap")
                and d["metadata"]["name"].endswith("-dashboard")]  # fmt: skip


def test_the_dashboard_goes_where_grafanas_sidecar_looks_and_nats_exports_its_own() -> None:
    docs = manifests(
        render(
            {
                "monitoring": {"enabled": True, "dashboard": {"namespace": "grafana"}},
                "nats": {"promExporter": {"enabled": True, "podMonitor": {"enabled": True}}},
            }
        )
    )
    assert one(docs, "ConfigMap", "-dashboard")["metadata"]["namespace"] == "grafana"
    nats = pod_spec(one(docs, "StatefulSet"))
    assert any("exporter" in c["name"] for c in nats["containers"]), nats["containers"]
    assert one(docs, "PodMonitor", "-nats")


def test_scenario_code_is_accepted_only_where_the_values_allow_it() -> None:
    def args(values: dict[str, Any], suffix: str) -> list[str]:
        got: list[str] = pod_spec(one(manifests(render(values)), "Deployment", suffix))[
            "containers"
        ][0]["args"]
        return got

    on = {"coordinator": {"enabled": True, "allowCode": True}, "agent": {"allowCode": True}}
    assert "--allow-code" in args(on, "-coordinator") and "--allow-code" in args(on, "-agent")
    off = {"coordinator": {"enabled": True}}
    assert "--allow-code" not in args(off, "-coordinator")
    assert "--allow-code" not in args(off, "-agent")


def test_the_notes_say_how_to_start_a_run() -> None:
    notes = render({})["loadpilot/templates/NOTES.txt"]
    assert "agent.allowTargets is empty" in notes
    assert "port-forward svc/lp-nats 4222:4222" in notes
    assert "--external-agents 2" in notes and "secret lp-nats-token" in notes
    notes = render(COMBINATIONS["coordinator+monitoring"])["loadpilot/templates/NOTES.txt"]
    assert "allowTargets is empty" not in notes
    assert "secret lp-loadpilot-coordinator" in notes and "/runs" in notes
    assert "ServiceMonitor" in notes


# -- the rendered commands, run -----------------------------------------------------------------


def container_env(c: Manifest, secrets: dict[str, Manifest], pod_name: str) -> dict[str, str]:
    """The environment Kubernetes gives a container: values, the pod's name, Secret keys."""
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[e["name"]] = pod_name
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container arguments."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], a) for a in args]


def http_get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers={"authorization": f"Bearer {token}"} if token else {})
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, body


def wait_status(
    port: int, path: str, status: int, timeout_s: float = 30.0, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = http_get(port, path)[0]
            if last == status:
                return
        except OSError as e:
            last = e
        time.sleep(0.2)
    said = log.read_text(errors="replace")[-2000:] if log is not None else ""
    raise AssertionError(f"GET :{port}{path} never answered {status} (last: {last})\n{said}")


class Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        p = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.tmp,
        )  # fmt: skip
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    ps = Processes(tmp_path)
    try:
        yield ps
    finally:
        ps.close()


def nats_config(rendered_conf: str, tmp: Path, port: int, monitor: int) -> Path:
    """The bundled NATS's nats.conf as the chart renders it, with this machine's ports and paths
    in place of the pod's."""
    conf = rendered_conf
    for key, value in (("port", str(port)), ("http_port", str(monitor))):
        conf, n = re.subn(rf'"{key}": \d+', f'"{key}": {value}', conf)
        assert n == 1, key
    for key, value in (("store_dir", tmp / "js"), ("pid_file", tmp / "nats.pid")):
        conf, n = re.subn(rf'"{key}": "[^"]*"', f'"{key}": "{value}"', conf)
        assert n == 1, key
    path = tmp / "nats.conf"
    path.write_text(conf)
    return path


def test_the_rendered_nats_agent_and_coordinator_run_a_load_test(
    processes: Processes, tmp_path: Path
) -> None:
    health, api, nats_port, monitor = free_port(), free_port(), free_port(), free_port()
    rendered = render(
        {
            "agent": {"replicas": 1, "healthPort": health, "allowTargets": ["127.0.0.1:*"]},
            "coordinator": {"enabled": True, "port": api, "maxRate": 2000, "maxDuration": "30s"},
            "monitoring": {"enabled": True},
        }
    )
    docs = manifests(rendered)
    secrets = {d["metadata"]["name"]: d for d in find(docs, "Secret")}
    local_nats = f"nats://127.0.0.1:{nats_port}"

    # NATS: the chart's nats.conf, the token from the Secret through NATS_TOKEN.
    nats = pod_spec(one(docs, "StatefulSet"))["containers"][0]
    nats_env = container_env(nats, secrets, "lp-nats-0")
    nats_env["SERVER_NAME"] = "lp-nats-0"
    conf = one(docs, "ConfigMap", "-nats-config")["data"]["nats.conf"]
    processes.start(
        "nats", [nats_server_binary(), "-c", str(nats_config(conf, tmp_path, nats_port, monitor))],
        nats_env,
    )  # fmt: skip
    wait_status(monitor, "/healthz?js-server-only=true", 200, log=tmp_path / "nats.log")

    def command(kind: str, suffix: str, pod: str) -> tuple[list[str], dict[str, str]]:
        c = pod_spec(one(docs, kind, suffix))["containers"][0]
        env = container_env(c, secrets, pod)
        args = expand(c["args"], env)
        args[args.index("--nats") + 1] = local_nats  # the Service's name resolves in-cluster
        return [sys.executable, "-m", "loadpilot.cli", *args], env

    args, env = command("Deployment", "-agent", "lp-loadpilot-agent-7d9f-x2k9p")
    processes.start("agent", args, {**env, "TMPDIR": str(tmp_path)})
    readiness = pod_spec(one(docs, "Deployment", "-agent"))["containers"][0]["readinessProbe"]
    wait_status(health, readiness["httpGet"]["path"], 200, log=tmp_path / "agent.log")

    args, env = command("Deployment", "-coordinator", "lp-loadpilot-coordinator-5c4b-q8r2t")
    args[args.index("--runs") + 1] = str(tmp_path / "runs")  # the pod's volume
    processes.start("coordinator", args, {**env, "TMPDIR": str(tmp_path)})
    coordinator = pod_spec(one(docs, "Deployment", "-coordinator"))["containers"][0]
    wait_status(
        api, coordinator["readinessProbe"]["httpGet"]["path"], 200, log=tmp_path / "coordinator.log"
    )
    token = env["LOADPILOT_TOKEN"]

    # The helm test pod's own check, with the addresses it would resolve in the cluster.
    check = one(docs, "Pod", "-test")["spec"]["containers"][0]
    test_env = {e["name"]: e["value"] for e in check["env"]}
    assert check["command"] == ["python", "-c"]
    ok = subprocess.run(
        [sys.executable, "-c", check["args"][0]],
        env={**os.environ, "NATS_URL": local_nats, "COORDINATOR_URL": f"http://127.0.0.1:{api}"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert set(test_env) == {"NATS_URL", "COORDINATOR_URL"}
    # ... which fails where NATS is not.
    bad = subprocess.run(
        [sys.executable, "-c", check["args"][0]],
        env={**os.environ, "NATS_URL": f"nats://127.0.0.1:{api}"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode != 0

    # A run through the coordinator's API on the agent: every request accounted for.
    with lp.start_target() as target:
        plan = {
            "name": "in-cluster",
            "target": target.url,
            "load": {
                "model": "open",
                "stages": [{"kind": "constant", "rate": 200, "duration_s": 2}],
            },
            "tasks": [{"name": "a", "requests": [{"path": "/"}]}],
        }
        c = http.client.HTTPConnection("127.0.0.1", api, timeout=60)
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        c.request("POST", "/runs", body=json.dumps(plan), headers=headers)
        r = c.getresponse()
        created = json.loads(r.read())
        assert r.status == 201, created
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = http_get(api, f"/runs/{created['id']}", token)
            info = json.loads(body)
            if info["state"] == "finished":
                break
            time.sleep(0.25)
        summary = info["summary"]
        assert summary["ended"] == "completed", (summary, processes.log("coordinator"))
        assert summary["overall"]["requests"] == summary["target_requests"] == 400
        assert target.served == 400
        # A target outside the allow-list the chart gave the coordinator is refused before any
        # agent sees the plan.
        c = http.client.HTTPConnection("127.0.0.1", api, timeout=60)
        elsewhere = {**plan, "target": "http://127.0.0.2:8080"}
        c.request("POST", "/runs", body=json.dumps(elsewhere), headers=headers)
        r = c.getresponse()
        refused = json.loads(r.read())
        assert r.status == 403 and "not allowed" in refused["detail"], refused
    # What the ServiceMonitor scrapes, with the token it is given.
    endpoint = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    status, text = http_get(api, endpoint["path"], token)
    assert status == 200 and f'loadpilot_requests_total{{run="{created["id"]}"' in text
    assert http_get(api, endpoint["path"])[0] == 401

    # NATS gone: the agent's readiness probe fails, and its liveness probe (a TCP connect to
    # the same port) still succeeds: an agent waiting for NATS is not restarted.
    processes.procs[0].kill()
    wait_status(health, readiness["httpGet"]["path"], 503)
    liveness = pod_spec(one(docs, "Deployment", "-agent"))["containers"][0]["livenessProbe"]
    assert liveness["tcpSocket"]["port"] == readiness["httpGet"]["port"]
    socket.create_connection(("127.0.0.1", health), timeout=5).close()
