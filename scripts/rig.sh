#!/usr/bin/env bash
# Test rig for the containerd runtime (issue #10): a private containerd and a loopback OCI
# registry holding a busybox test image, all under one directory, torn down by `stop`.
#
#   eval "$(scripts/rig.sh start DIR)"   # prints WARREN_RIG_* variables to export
#   scripts/rig.sh stop DIR              # kills what start started (by PID) and removes DIR
#
# Needs root and Debian's containerd, runc, docker-registry, umoci, skopeo, busybox-static
# (installed here when missing). Nothing is downloaded but Debian's packages: the image is
# built from /bin/busybox.
#   RIG_REGISTRY_PORT   the registry's port (default: a free one)
#   RIG_REGISTRY_HOST   the address it listens on (default 127.0.0.1; the multi-host tests
#                       put it on their lab bridge so that every host reaches it)
#   RIG_NO_CONTAINERD=1 registries and image only; RIG_CONTAINERD_ONLY=1 containerd only
#                       (one per worker host in the multi-host tests)
set -euo pipefail
cmd=${1:?usage: rig.sh start|stop DIR}
dir=${2:?usage: rig.sh start|stop DIR}

need_packages() { "$(dirname "$0")/deps.sh" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 20 s for "$@" to succeed.
wait_for() {
  for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "rig: timed out waiting for: $*" >&2
  return 1
}

start() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "${RIG_CONTAINERD_ONLY:-}" = 1 ]; then
    start_containerd
    echo "export WARREN_RIG_CONTAINERD_SOCKET=$dir/containerd/containerd.sock"
    return
  fi
  need_packages
  local host=${RIG_REGISTRY_HOST:-127.0.0.1}
  # The registry, on a free loopback port, storing under DIR.
  local port
  port=${RIG_REGISTRY_PORT:-$(free_port)}
  cat >"$dir/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/registry
http:
  addr: $host:$port
EOF
  setsid docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
  echo $! >"$dir/registry.pid"
  wait_for curl -sf "http://$host:$port/v2/"

  # A second registry that wants a password (htpasswd, user warren / s3cret).
  local auth_port
  auth_port=$(free_port)
  htpasswd -Bbn warren s3cret >"$dir/htpasswd" 2>/dev/null
  cat >"$dir/auth-registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/auth-registry
auth:
  htpasswd:
    realm: warren-rig
    path: $dir/htpasswd
http:
  addr: 127.0.0.1:$auth_port
EOF
  setsid docker-registry serve "$dir/auth-registry.yml" >"$dir/auth-registry.log" 2>&1 &
  echo $! >"$dir/auth-registry.pid"
  wait_for sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$auth_port/v2/)\" = 401 ]"

  [ "${RIG_NO_CONTAINERD:-}" = 1 ] || start_containerd

  # The test image: busybox-static with sh, sleep and httpd, pushed to the registry.
  local image="$host:$port/busybox:test"
  (
    cd "$dir"
    umoci init --layout oci >/dev/null
    umoci new --image oci:bb >/dev/null
    umoci unpack --rootless --image oci:bb bundle >/dev/null
    mkdir -p bundle/rootfs/bin bundle/rootfs/www
    cp /bin/busybox bundle/rootfs/bin/busybox
    for app in sh sleep httpd echo cat ls true false; do ln -sf busybox "bundle/rootfs/bin/$app"; done
    echo "hello from warren" >bundle/rootfs/www/index.html
    umoci repack --image oci:bb bundle >/dev/null
    umoci config --image oci:bb --config.cmd /bin/httpd --config.cmd -f --config.cmd -p \
      --config.cmd 8000 --config.cmd -h --config.cmd /www --config.env PATH=/bin >/dev/null
    skopeo copy -q --dest-tls-verify=false oci:oci:bb "docker://$image" >&2
    skopeo copy -q --dest-tls-verify=false --dest-creds warren:s3cret oci:oci:bb \
      "docker://127.0.0.1:$auth_port/busybox:test" >&2
    rm -rf bundle oci
    # An index that offers the image for linux/arm64 only (no image for this host).
    skopeo inspect --raw --tls-verify=false "docker://$image" >manifest.json
    local digest size
    digest="sha256:$(sha256sum manifest.json | cut -d' ' -f1)"
    size=$(stat -c %s manifest.json)
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"arm64","os":"linux"}}]}' \
      "$digest" "$size" >index.json
    curl -sf -X PUT -H "Content-Type: application/vnd.oci.image.index.v1+json" --data-binary @index.json \
      "http://$host:$port/v2/busybox/manifests/armonly" >/dev/null
    rm -f manifest.json index.json
    # The same image with its own HEALTHCHECK (Docker's image config field), one that passes
    # and one that never does.
    with_healthcheck "$host:$port" busybox test healthy '["CMD-SHELL", "test -x /bin/sh"]'
    with_healthcheck "$host:$port" busybox test unhealthy '["CMD", "false"]'
  )
  echo "export WARREN_RIG_DIR=$dir"
  [ "${RIG_NO_CONTAINERD:-}" = 1 ] || echo "export WARREN_RIG_CONTAINERD_SOCKET=$dir/containerd/containerd.sock"
  echo "export WARREN_RIG_REGISTRY=$host:$port"
  echo "export WARREN_RIG_IMAGE=$image"
  echo "export WARREN_RIG_ARM_ONLY_IMAGE=$host:$port/busybox:armonly"
  echo "export WARREN_RIG_HEALTHY_IMAGE=$host:$port/busybox:healthy"
  echo "export WARREN_RIG_UNHEALTHY_IMAGE=$host:$port/busybox:unhealthy"
  echo "export WARREN_RIG_AUTH_REGISTRY=127.0.0.1:$auth_port"
  echo "export WARREN_RIG_AUTH_IMAGE=127.0.0.1:$auth_port/busybox:test"
  echo "export WARREN_RIG_AUTH_USER=warren"
  echo "export WARREN_RIG_AUTH_PASSWORD=s3cret"
}

# Pushes REGISTRY/REPO:TAG as REPO:NEW_TAG with HEALTHCHECK TEST (a JSON list), interval 1 s,
# 2 retries, through the registry's API: umoci cannot set the field.
with_healthcheck() {
  python3 - "$@" <<'PY'
import hashlib, json, sys, urllib.request
registry, repo, tag, new_tag, test = sys.argv[1:]
base = f"http://{registry}/v2/{repo}"
oci = "application/vnd.oci.image.manifest.v1+json"
def call(url, data=None, method="GET", ctype=None, accept=None, want=None):
    req = urllib.request.Request(url, data=data, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req) as r:
        return r.headers[want] if want else r.read()
manifest = json.loads(call(f"{base}/manifests/{tag}", accept=oci))
config = json.loads(call(f"{base}/blobs/{manifest['config']['digest']}"))
config.setdefault("config", {})["Healthcheck"] = {
    "Test": json.loads(test), "Interval": 1_000_000_000, "Timeout": 2_000_000_000, "Retries": 2}
blob = json.dumps(config).encode()
digest = "sha256:" + hashlib.sha256(blob).hexdigest()
upload = call(f"{base}/blobs/uploads/", b"", "POST", want="Location")
upload = upload if upload.startswith("http") else f"http://{registry}{upload}"
sep = "&" if "?" in upload else "?"
call(f"{upload}{sep}digest={digest}", blob, "PUT", "application/octet-stream")
manifest["config"]["digest"], manifest["config"]["size"] = digest, len(blob)
call(f"{base}/manifests/{new_tag}", json.dumps(manifest).encode(), "PUT", manifest.get("mediaType", oci))
PY
}

# A private containerd (its own root, state and socket).
start_containerd() {
  mkdir -p "$dir/containerd"
  # Own session: a Ctrl-C meant for the caller must not stop containerd before `stop` has
  # removed the containers through it.
  setsid containerd --root "$dir/containerd/root" --state "$dir/containerd/state" \
    --address "$dir/containerd/containerd.sock" >"$dir/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  wait_for ctr --address "$dir/containerd/containerd.sock" version
}

stop() {
  [ -d "$dir" ] || return 0
  # Containers first (their shims outlive containerd otherwise), in every namespace.
  local sock="$dir/containerd/containerd.sock"
  if [ -S "$sock" ] && ctr --address "$sock" version >/dev/null 2>&1; then
    for ns in $(ctr --address "$sock" namespaces ls -q 2>/dev/null); do
      for t in $(ctr --address "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr --address "$sock" -n "$ns" tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
        for _ in $(seq 1 50); do ctr --address "$sock" -n "$ns" tasks delete "$t" >/dev/null 2>&1 && break; sleep 0.1; done
      done
    done
  fi
  # Shims left without their containerd (it died first): kill their containers through runc,
  # then the shims, found by the socket address in their command line.
  { pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true; } | while read -r pid; do
    args=$(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null) || continue
    ns=$(sed -n 's/.*-namespace \([^ ]*\).*/\1/p' <<<"$args")
    id=$(sed -n 's/.*-id \([^ ]*\).*/\1/p' <<<"$args")
    [ -n "$ns" ] && [ -n "$id" ] && runc --root "/run/containerd/runc/$ns" delete -f "$id" >/dev/null 2>&1 || true
    kill -9 "$pid" 2>/dev/null || true
  done
  for name in containerd registry auth-registry; do
    if [ -f "$dir/$name.pid" ]; then
      kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$(cat "$dir/$name.pid")" 2>/dev/null || true
    fi
  done
  # containerd's mounts of snapshots and shim state, if any are left.
  grep " $dir/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$dir"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: rig.sh start|stop DIR" >&2; exit 2 ;;
esac
