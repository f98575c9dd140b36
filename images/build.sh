#!/usr/bin/env bash
# Build the project's images on a machine with no container engine and no reachable registry of
# base images: buildah (from Debian) builds the project's own Dockerfiles on a CPython base made
# here from Debian packages, which stands in for python:3.11-slim-bookworm.
#
#   images/build.sh                  build operator and cpu (what runs on this kind of machine)
#   images/build.sh operator cpu     only these: operator cpu inference training
#   images/build.sh --print-tags     print "<image> <tag>" for every image, build nothing
#
# An image is tagged selfreward-<image>:<key>, the key a hash of everything its build reads (the
# Dockerfile, the lock files, the sources it copies, the base), and selfreward-<image>:0.1.0 too:
# a second run with the same inputs builds nothing. Images live in buildah's storage, outside
# the repository. The host's uv cache is mounted (copy-on-write) into the build as a download
# cache: the image still installs exactly the lock, with its hashes checked.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=0.1.0
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python3-pip,ca-certificates,passwd
ALL=(operator cpu inference training)
DEFAULT=(operator cpu)

dockerfile_of() {
  case "$1" in
    operator) echo Dockerfile ;;
    cpu|inference|training) echo "images/$1/Dockerfile" ;;
    *) echo "build.sh: unknown image: $1 (one of ${ALL[*]})" >&2; return 1 ;;
  esac
}

# What each build copies from the repository (its Dockerfile's COPY sources) and the locks it reads.
inputs_of() {
  case "$1" in
    operator) echo Dockerfile pyproject.toml uv.lock crds operator trainer/pyproject.toml ;;
    cpu) echo images/cpu pyproject.toml uv.lock operator/pyproject.toml trainer ;;
    inference|training) echo "images/$1" trainer ;;
  esac
}

base_key() { echo "$SUITE $BASE_PACKAGES" | sha256sum | cut -c1-12; }
BASE_IMAGE=localhost/selfreward-python:3.11-$SUITE-$(base_key)

image_key() {
  # shellcheck disable=SC2046
  (cd "$REPO" && git ls-files -s -- $(inputs_of "$1") 2>/dev/null | sort; \
   cd "$REPO" && find $(inputs_of "$1") -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; \
   echo "$BASE_IMAGE") | sha256sum | cut -c1-12
}

tag_of() { echo "localhost/selfreward-$1:$(image_key "$1")"; }

if [[ "${1:-}" == "--print-tags" ]]; then
  for image in "${ALL[@]}"; do echo "$image $(tag_of "$image")"; done
  exit 0
fi

ensure_tools() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [[ -x /usr/sbin/runc ]] || missing+=(runc)
  ((${#missing[@]} == 0)) && return 0
  [[ $(id -u) == 0 ]] || { echo "build.sh: install ${missing[*]} (apt), or run as root" >&2; exit 1; }
  echo "build.sh: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
}

exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

ensure_base() {
  exists "$BASE_IMAGE" && return 0
  echo "build.sh: making $BASE_IMAGE from Debian packages" >&2
  local work container
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  # Debian marks its Python externally managed; the base, like python:3.11-slim, lets pip install.
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
    --customize-hook='rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED' \
    --customize-hook='ln -sf python3 "$1"/usr/bin/python' \
    "$SUITE" "$work/rootfs.tar"
  container=$(buildah from scratch)
  buildah add --quiet "$container" "$work/rootfs.tar" / >/dev/null
  # uv reads the system trust store only when told to (it ships its own roots otherwise).
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --cmd python3 "$container"
  buildah commit --quiet --rm "$container" "$BASE_IMAGE" >/dev/null
}

build() {
  local image=$1 tag
  tag=$(tag_of "$image")
  if ! exists "$tag"; then
    echo "build.sh: building $tag" >&2
    local uv_cache=${UV_CACHE_DIR:-$HOME/.cache/uv} volumes=()
    mkdir -p "$uv_cache"
    # Build steps reach the package registry through this machine's TLS trust store; the cache
    # mount is copy-on-write (:O), so nothing a build writes lands in the host's cache.
    [[ -d /etc/ssl/certs ]] && volumes+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
    volumes+=(-v "$uv_cache:/root/.cache/uv:O")
    # chroot isolation: no OCI runtime or cgroup setup needed for RUN steps on these machines.
    buildah build --quiet --isolation chroot \
      --build-arg PYTHON_IMAGE="$BASE_IMAGE" \
      "${volumes[@]}" \
      -f "$REPO/$(dockerfile_of "$image")" -t "$tag" "$REPO" >/dev/null
  fi
  buildah tag "$tag" "localhost/selfreward-$image:$VERSION"
  # Earlier builds of this image (other input hashes) are only taking space now.
  local stale
  for stale in $(buildah images --format '{{.Name}}:{{.Tag}}' --filter "reference=localhost/selfreward-$image" 2>/dev/null); do
    [[ "$stale" == "$tag" || "$stale" == *":$VERSION" ]] || buildah rmi "$stale" >/dev/null 2>&1 || true
  done
  echo "$image $tag"
}

images=("$@")
((${#images[@]})) || images=("${DEFAULT[@]}")
for image in "${images[@]}"; do dockerfile_of "$image" >/dev/null; done
ensure_tools
ensure_base
for image in "${images[@]}"; do build "$image"; done
