#!/usr/bin/env bash
# Build the testbed's binaries from the Go module proxy, once, and cache them outside the repo.
#
#   testbed/build.sh                 build everything that is not cached yet
#   testbed/build.sh minio etcd      only these components
#   testbed/build.sh --print-dirs    print "<component> <dir>" for every component, build nothing
#
# Components: minio etcd kubernetes kwok helm training-operator kubelet pause.
# The real node (kubelet, pause) also needs Debian's containerd, runc and CNI plugins: building
# either installs them with apt when missing (NODE_PACKAGES below).
# Each lands in $SELFREWARD_TESTBED_CACHE/<component>-<version>/ (default
# $HOME/.cache/selfreward-testbed) with a .complete marker written last, so a second run only
# checks markers. Go's own module and build caches stay at their default locations.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE=${SELFREWARD_TESTBED_CACHE:-$HOME/.cache/selfreward-testbed}
ALL=(minio etcd kubernetes kwok helm training-operator kubelet pause)
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables gcc libc6-dev)

version_of() {
  case "$1" in
    minio) echo "$MINIO_VERSION" ;;
    etcd) echo "$ETCD_VERSION" ;;
    kubernetes) echo "$KUBERNETES_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    training-operator) echo "$TRAINING_OPERATOR_VERSION" ;;
    kubelet|pause) echo "$KUBERNETES_VERSION" ;;
    *) echo "unknown component: $1" >&2; return 1 ;;
  esac
}

dir_of() { echo "$CACHE/$1-$(version_of "$1")"; }

if [[ "${1:-}" == "--print-dirs" ]]; then
  for c in "${ALL[@]}"; do echo "$c $(dir_of "$c")"; done
  exit 0
fi

GO=${GO:-$(command -v go || true)}
[[ -n "$GO" ]] || GO=/usr/local/go/bin/go
[[ -x "$GO" ]] || { echo "build.sh: no Go toolchain found (set GO=/path/to/go)" >&2; exit 1; }

# -mod=mod: let go resolve requirements in the wrapper modules; local toolchain only;
# static binaries; no absolute build paths in the binaries.
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
BUILD_FLAGS=(-trimpath)
LDFLAGS="-s -w"

moddir() {  # directory of a module in the module cache (downloads it if needed)
  "$GO" mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
}

build_minio() {
  GOBIN="$1" "$GO" install "${BUILD_FLAGS[@]}" -ldflags "$LDFLAGS" \
    "github.com/minio/minio@$MINIO_VERSION"
}

build_etcd() {
  # etcd's server module replaces its sibling modules with relative paths: a wrapper module
  # pins them all at the same release instead.
  local src="$CACHE/src/etcd-$ETCD_VERSION"
  rm -rf "$src" && mkdir -p "$src"
  cat >"$src/go.mod" <<EOF
module selfreward.local/testbed/etcd

go 1.24

require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
EOF
  (cd "$src" && "$GO" build "${BUILD_FLAGS[@]}" -ldflags "$LDFLAGS" -o "$1/etcd" go.etcd.io/etcd/server/v3)
}

kubernetes_wrapper() {
  # k8s.io/kubernetes replaces every k8s.io/<staging> module with ./staging/...; a wrapper
  # module replaces each with the published v0.X.Y of the same release.
  local src="$CACHE/src/kubernetes-$KUBERNETES_VERSION" kdir
  kdir=$(moddir "k8s.io/kubernetes@$KUBERNETES_VERSION")
  mkdir -p "$src"
  {
    echo "module selfreward.local/testbed/kubernetes"
    echo
    echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kdir/go.mod")"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*$#\t\1 => \1 '"$KUBERNETES_STAGING_VERSION"'#p' "$kdir/go.mod"
    echo ")"
  } >"$src/go.mod.new"
  mv "$src/go.mod.new" "$src/go.mod"
  echo "$src"
}

kubernetes_ldflags() {
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local x="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$LDFLAGS$x"
}

build_kubernetes() {
  # One `go build` of all four commands shares the compilation of the common packages.
  local src; src=$(kubernetes_wrapper)
  (cd "$src" && "$GO" build "${BUILD_FLAGS[@]}" -ldflags "$(kubernetes_ldflags)" -o "$1/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)
}

ensure_node_packages() {
  local missing=() p
  for p in "${NODE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ $(id -u) == 0 ]] || { echo "build.sh: the real node needs: apt-get install ${missing[*]}" >&2; return 1; }
  echo "build.sh: installing ${missing[*]} (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
  # The testbed starts containerd itself, in its own network namespace; not as a system service.
  if command -v systemctl >/dev/null && systemctl is-active --quiet containerd 2>/dev/null; then
    systemctl disable --now containerd >/dev/null 2>&1 || true
  fi
}

build_kubelet() {
  # The same wrapper module as the control plane: the shared packages come from Go's build cache.
  # containerd 1.x (Debian's 1.6) is supported by kubelet up to 1.36; 1.37 needs containerd 2.
  ensure_node_packages
  local src; src=$(kubernetes_wrapper)
  (cd "$src" && "$GO" build "${BUILD_FLAGS[@]}" -ldflags "$(kubernetes_ldflags)" -o "$1/" \
    k8s.io/kubernetes/cmd/kubelet)
}

build_pause() {
  # The pod sandbox's process, from the kubernetes module's own source (no image can be pulled).
  ensure_node_packages
  local kdir; kdir=$(moddir "k8s.io/kubernetes@$KUBERNETES_VERSION")
  gcc -Os -Wall -Werror -static -DVERSION="$KUBERNETES_VERSION" -o "$1/pause" "$kdir/build/pause/linux/pause.c"
  strip "$1/pause"
}

build_kwok() {
  GOBIN="$1" "$GO" install "${BUILD_FLAGS[@]}" \
    -ldflags "$LDFLAGS -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # kwok's own node stages (fast initialize, heartbeat with lease); pod stages are ours.
  local d; d=$(moddir "sigs.k8s.io/kwok@$KWOK_VERSION")
  mkdir -p "$1/stages"
  cp "$d/kustomize/stage/node/fast/node-initialize.yaml" \
     "$d/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" "$1/stages/"
  chmod u+w "$1/stages/"*.yaml
}

build_helm() {
  GOBIN="$1" "$GO" install "${BUILD_FLAGS[@]}" \
    -ldflags "$LDFLAGS -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_training-operator() {
  local mod="github.com/kubeflow/training-operator"
  GOBIN="$1" "$GO" install "${BUILD_FLAGS[@]}" -ldflags "$LDFLAGS" \
    "$mod/cmd/training-operator.v1@$TRAINING_OPERATOR_VERSION"
  mv "$1/training-operator.v1" "$1/training-operator"
  local d; d=$(moddir "$mod@$TRAINING_OPERATOR_VERSION")
  mkdir -p "$1/crds"
  cp "$d/manifests/base/crds/kubeflow.org_pytorchjobs.yaml" "$1/crds/"
  chmod u+w "$1/crds/"*.yaml
}

build_one() {
  local c=$1 dir tmp t0
  dir=$(dir_of "$c")
  if [[ -f "$dir/.complete" ]]; then
    echo "build.sh: $c $(version_of "$c") cached at $dir"
    return 0
  fi
  tmp="$dir.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  echo "build.sh: building $c $(version_of "$c") ..."
  t0=$(date +%s)
  "build_$c" "$tmp"
  touch "$tmp/.complete"
  rm -rf "$dir" && mv "$tmp" "$dir"
  echo "build.sh: built $c $(version_of "$c") in $(( $(date +%s) - t0 )) s -> $dir"
}

mkdir -p "$CACHE"
# Concurrent callers (make testbed, a pytest fixture) wait for one another instead of racing.
exec 9>"$CACHE/.build.lock"
flock 9

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=("${ALL[@]}")
T0=$(date +%s)
for c in "${components[@]}"; do
  version_of "$c" >/dev/null
  build_one "$c"
done
echo "build.sh: done in $(( $(date +%s) - T0 )) s"
