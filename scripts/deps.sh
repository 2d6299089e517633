#!/usr/bin/env bash
# Installs what building and testing Warren needs on Debian: protoc for the gRPC code; for
# the real-container tests and the demo, containerd + runc, a registry (docker-registry),
# umoci + skopeo + busybox-static to build the test image, htpasswd (apache2-utils) for a
# registry with a password, curl and python3; ss (iproute2) to check which sockets listen and
# to make the multi-host tests' network namespaces; shellcheck and python3-yaml to check the
# test scripts and the Lima template; Prometheus's Python client (pip) to parse /metrics in tests.
set -euo pipefail
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v umoci >/dev/null || need+=(umoci)
command -v skopeo >/dev/null || need+=(skopeo)
command -v htpasswd >/dev/null || need+=(apache2-utils)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need+=(busybox-static)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v ss >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
command -v shellcheck >/dev/null || need+=(shellcheck)
python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${need[@]}" || { $SUDO apt-get update -q && $SUDO apt-get install -y -q "${need[@]}"; }
fi
# The metrics test parses /metrics with Prometheus's own parser, in whichever python3 is first
# on PATH (a pyenv one does not see Debian's python3-* packages).
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus-client
