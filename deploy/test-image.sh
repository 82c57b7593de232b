#!/usr/bin/env bash
# Builds deploy/Dockerfile with podman from base images made here from Debian packages (no
# registry needed) and runs it as a cluster would: a NATS container, the built-in target, three
# agents and a coordinator (`loadpilot serve`) on a podman network, every container non-root
# with a read-only root filesystem. A plan posted to the coordinator must give exact counts: the
# summary's, per task, and the target's own.
#
#   make test-image        (as root; installs podman, runc and mmdebstrap with apt-get)
#
# The base images: `mmdebstrap --variant=minbase` of Debian bookworm (Python 3.11, as the
# Dockerfile's default python:3.11-slim), imported with `podman import`; the build stage's Rust
# is this machine's toolchain, imported the same way. This machine's CA bundle goes into the
# base images, so the build reaches PyPI and crates.io wherever this machine does.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in podman runc mmdebstrap; do
  command -v "$tool" >/dev/null || { apt-get update && apt-get install -y podman runc mmdebstrap uidmap; break; }
done

work=$(mktemp -d /tmp/loadpilot-image.XXXXXX)
tag="loadpilot-test-$(date +%s)"
net="$tag-net"
# Containers here: runc, cgroupfs, no default ulimits (the sandbox may forbid raising limits).
printf '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\n' > "$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"
P=(podman --runtime runc)

cleanup() {
  "${P[@]}" rm -f "$tag-nats" "$tag-target" "$tag-agent0" "$tag-agent1" "$tag-agent2" "$tag-serve" >/dev/null 2>&1 || true
  "${P[@]}" network rm "$net" >/dev/null 2>&1 || true
  "${P[@]}" rmi -f "$tag:latest" "$tag-base:bookworm" "$tag-build:bookworm" "$tag-rust:latest" \
    >/dev/null 2>&1 || true
  "${P[@]}" image prune -f >/dev/null 2>&1 || true  # the build stage's, left untagged
  rm -rf "$work"
}
trap cleanup EXIT

started=$(date +%s)
ca=/etc/ssl/certs/ca-certificates.crt
echo "base images (mmdebstrap, bookworm)"
mmdebstrap --quiet --variant=minbase --include=python3,python3-pip,ca-certificates \
  --customize-hook="copy-in $ca /etc/ssl/certs/" bookworm "$work/base.tar"
"${P[@]}" import --quiet --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" "$work/base.tar" "$tag-base:bookworm" >/dev/null
mmdebstrap --quiet --variant=minbase \
  --include=python3,python3-pip,python3-venv,python3-dev,gcc,libc6-dev,ca-certificates \
  --customize-hook="copy-in $ca /etc/ssl/certs/" bookworm "$work/build.tar"
"${P[@]}" import --quiet --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" "$work/build.tar" "$tag-build:bookworm" >/dev/null
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
toolchain=$(rustup show active-toolchain | cut -d' ' -f1)
tar -C / --exclude="*/share/doc" \
  --transform "s,^${rustup_home#/},usr/local/rustup," --transform "s,^${cargo_home#/},usr/local/cargo," \
  -cf "$work/rust.tar" "${rustup_home#/}/settings.toml" "${rustup_home#/}/toolchains/$toolchain" "${cargo_home#/}/bin"
"${P[@]}" import --quiet "$work/rust.tar" "$tag-rust:latest" >/dev/null

echo "the image (podman build of deploy/Dockerfile)"
"${P[@]}" build --quiet --format docker --network host -f deploy/Dockerfile \
  --build-arg RUST_IMAGE="$tag-rust:latest" --build-arg BUILD_IMAGE="$tag-build:bookworm" \
  --build-arg PYTHON_IMAGE="$tag-base:bookworm" -t "$tag:latest" . >/dev/null
built=$(date +%s)

echo "a cluster of containers"
image="$tag:latest"
token=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
runs="$work/runs"
mkdir -p "$runs" && chmod 777 "$runs"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
locked=(--network "$net" --read-only --tmpfs /tmp)
"${P[@]}" network create "$net" >/dev/null
"${P[@]}" run -d --name "$tag-nats" "${locked[@]}" --entrypoint nats-server "$image" \
  -js -sd /tmp/js --auth "$token" >/dev/null
"${P[@]}" run -d --name "$tag-target" "${locked[@]}" "$image" target --host 0.0.0.0 --port 8080 >/dev/null
for i in 0 1 2; do
  "${P[@]}" run -d --name "$tag-agent$i" "${locked[@]}" -e LOADPILOT_NATS_TOKEN="$token" "$image" \
    agent --nats "nats://$tag-nats:4222" --name "a$i" --allow-target "$tag-target" >/dev/null
done
"${P[@]}" run -d --name "$tag-serve" "${locked[@]}" -v "$runs:/runs" -p "127.0.0.1:$port:8000" \
  -e LOADPILOT_NATS_TOKEN="$token" "$image" serve --host 0.0.0.0 --port 8000 --token "$token" \
  --runs /runs --nats "nats://$tag-nats:4222" --external-agents 3 --allow-target "$tag-target" >/dev/null

for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.2
done
uid=$("${P[@]}" exec "$tag-agent0" id -u)
[ "$uid" = 10001 ] || { echo "FAIL: the agent runs as uid $uid, not 10001"; exit 1; }
if "${P[@]}" exec "$tag-agent0" touch /usr/local/x 2>/dev/null; then
  echo "FAIL: the root filesystem is writable"; exit 1
fi

# Ready as a cluster is before load: each agent's container resolves the target's name and
# connects to it (a container just started may not reach another for a moment; a run started
# then measures the network's start, all its slice's requests waiting on it).
for i in 0 1 2; do
  "${P[@]}" exec "$tag-agent$i" python3 -c '
import socket, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection((sys.argv[1], 8080), timeout=2).close()
        break
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"FAIL: agent container {sys.argv[2]} cannot reach {sys.argv[1]}:8080: {e}")
        time.sleep(0.2)
' "$tag-target" "$i"
done
plan="{\"name\": \"image\", \"target\": \"http://$tag-target:8080\", \"load\": {\"model\": \"open\", \"stages\": [{\"kind\": \"constant\", \"rate\": 300, \"duration_s\": 5}]}, \"tasks\": [{\"name\": \"home\", \"weight\": 5, \"requests\": [{\"path\": \"/\"}]}, {\"name\": \"data\", \"requests\": [{\"path\": \"/json\"}]}]}"
last=$(curl -sf --max-time 120 -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d "$plan" "http://127.0.0.1:$port/run" | tail -1)
"${P[@]}" stop -t 10 "$tag-target" >/dev/null
served=$("${P[@]}" logs "$tag-target" 2>&1 | sed -n 's/.*served \([0-9]*\) requests.*/\1/p')
show_logs() {
  echo "FAIL: the run's output, then each container's log"
  echo "$last"
  for c in serve agent0 agent1 agent2 nats; do
    echo "--- $c"; "${P[@]}" logs "$tag-$c" 2>&1 | tail -40
  done
  echo "--- events"; cat "$runs"/*/events.jsonl 2>/dev/null | tail -40
}
python3 - "$last" "$served" <<'EOF' || { show_logs; exit 1; }
import json, sys
s = json.loads(sys.argv[1])["summary"]
served = int(sys.argv[2])
tasks = [(t["name"], t["requests"]) for t in s["tasks"]]
print(f"ended {s['ended']}: {s['overall']['requests']} requests of {s['target_requests']:.0f} due, "
      f"{tasks}; the target served {served}")
assert s["ended"] == "completed", s["ended"]
assert s["target_requests"] == s["overall"]["requests"] == served == 1500
assert tasks == [("home", 1250), ("data", 250)] and s["overall"]["errors"] == 0
EOF
echo "ok: built in $((built - started)) s, ran in $(($(date +%s) - built)) s"
