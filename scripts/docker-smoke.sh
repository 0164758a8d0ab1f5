#!/usr/bin/env bash
# Build the CPU variant of docker/Dockerfile and smoke-test it inside the build (docs/docker.md).
#
# usage: bash scripts/docker-smoke.sh
# 1. makes the base image when missing: Debian bookworm (python3, python3-venv) by debootstrap, imported
#    into the engine (no image registry needed);
# 2. builds --target smoke: the runtime image plus RUN steps that run `llem-mlflow --version` and README's
#    main job (`llem-mlflow run --model gpt2 ...`, CPU, offline, random weights) into the image's MLflow
#    store and check result.json and the MLflow run; any failure fails the build;
# 3. tags the runtime stage (no smoke files) as $IMAGE and prints its size and the build time.
# Engine: podman (installed with apt-get when missing), or docker when podman is absent and a docker daemon
# answers. Environment (all optional):
#   IMAGE          tag of the runtime image            (default llem-mlflow:cpu)
#   BASE_IMAGE     base image                          (default localhost/llem-base:bookworm, made here)
#   DEBIAN_MIRROR  mirror for debootstrap              (default http://deb.debian.org/debian)
#   TORCH_SPEC     pip requirement for torch           (default torch==2.13.0, see TORCH_WHEELS)
#   TORCH_INDEX    index for torch, empty = PyPI       (default: see below)
#   TORCH_WHEELS   folder holding a CPU torch wheel, mounted at build time (podman only; default /opt/wheels
#                  when it holds torch-*+cpu-*.whl). Without one, torch comes from download.pytorch.org/whl/cpu
#                  when reachable, else from PyPI, whose linux x86_64 torch is the CUDA build (GBs larger).
#   CA_BUNDLE      CA bundle mounted at build time for pip (podman only; default $SSL_CERT_FILE or the
#                  system bundle)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[docker-smoke] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else return 1
  fi
}
apt_install() {  # apt_install PACKAGE...
  say "installing $* with apt-get"
  command -v apt-get >/dev/null 2>&1 || die "no apt-get here: install $* yourself and run again"
  if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
         && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }; then
    die "could not install $* (needs root or sudo, and an apt mirror): install it and run again"
  fi
}

# --- engine -------------------------------------------------------------------------------------------
engine=${ENGINE:-}
if [ -z "$engine" ]; then
  if command -v podman >/dev/null 2>&1; then engine=podman
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
  else apt_install podman; engine=podman
  fi
fi
say "engine: $engine ($("$engine" --version))"
image_exists() {
  if [ "$engine" = podman ]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}

# --- base image ---------------------------------------------------------------------------------------
IMAGE=${IMAGE:-llem-mlflow:cpu}
BASE_IMAGE=${BASE_IMAGE:-localhost/llem-base:bookworm}
t0=$(date +%s)
if image_exists "$BASE_IMAGE"; then
  say "base image $BASE_IMAGE: present"
else
  case "$BASE_IMAGE" in localhost/*) ;; *) die "base image $BASE_IMAGE is missing (only localhost/* is made here)" ;; esac
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  root=$(mktemp -d)
  trap 'as_root rm -rf "$root"' EXIT
  say "making $BASE_IMAGE: debootstrap bookworm into $root"
  as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null \
    || die "debootstrap failed (needs root or sudo and the Debian mirror)"
  # what an image does not need: apt caches, manuals, translations, docs (copyright files stay)
  as_root rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/cache/apt/"*.bin "$root/var/lib/apt/lists/"* \
    "$root/usr/share/man/"* "$root/usr/share/locale/"*
  as_root find "$root/usr/share/doc" -type f ! -name copyright -delete
  as_root tar -C "$root" -c . \
    | "$engine" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$BASE_IMAGE" >/dev/null
  as_root rm -rf "$root"
  trap - EXIT
fi
t1=$(date +%s)

# --- torch source -------------------------------------------------------------------------------------
args=(-f docker/Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE")
wheels=${TORCH_WHEELS-/opt/wheels}
cpu_wheel=""
if [ -n "$wheels" ] && [ -d "$wheels" ]; then
  cpu_wheel=$(find "$wheels" -maxdepth 1 -name 'torch-*+cpu-*.whl' | sort | tail -n 1)
fi
if [ "$engine" = podman ] && [ -n "$cpu_wheel" ]; then
  version=$(basename "$cpu_wheel" | cut -d- -f2)  # e.g. 2.13.0+cpu
  TORCH_SPEC=${TORCH_SPEC:-torch==$version}
  TORCH_INDEX=${TORCH_INDEX-}
  args+=(-v "$(cd "$wheels" && pwd):/wheels:ro" --build-arg TORCH_FIND_LINKS=/wheels)
  say "torch: $TORCH_SPEC from $wheels (mounted at build time)"
elif [ -z "${TORCH_INDEX+set}" ] && command -v curl >/dev/null 2>&1 \
     && curl -fsS -m 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
  TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
  TORCH_INDEX=https://download.pytorch.org/whl/cpu
  say "torch: $TORCH_SPEC from $TORCH_INDEX"
else
  TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
  TORCH_INDEX=${TORCH_INDEX-}
  say "torch: $TORCH_SPEC from ${TORCH_INDEX:-PyPI}"
  [ -n "$TORCH_INDEX" ] || say "note: PyPI's linux x86_64 torch is the CUDA build (nvidia-* wheels, GBs)"
fi
args+=(--build-arg "TORCH_SPEC=$TORCH_SPEC" --build-arg "TORCH_INDEX=$TORCH_INDEX")

if [ "$engine" = podman ]; then
  # chroot isolation: RUN steps work where crun cannot set rlimits; host network reaches the package index.
  args+=(--isolation=chroot --network=host)
  ca=${CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
  if [ -s "$ca" ]; then
    args+=(-v "$(readlink -f "$ca"):/etc/ssl/certs/ca-certificates.crt:ro")
    say "CA bundle: $ca (mounted at build time, not copied)"
  fi
fi

# --- build and smoke test -----------------------------------------------------------------------------
say "building --target smoke (runtime image + smoke RUN steps)"
"$engine" build "${args[@]}" --target smoke -t "$IMAGE-smoke" .
"$engine" build "${args[@]}" --target image -t "$IMAGE" . >/dev/null
t2=$(date +%s)

if [ "$engine" = podman ]; then size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
else size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
fi
echo "smoke test passed: llem-mlflow --version and llem-mlflow run (result.json, MLflow run) in $IMAGE-smoke"
echo "image      $IMAGE  $((size / 1000000)) MB ($size bytes)"
echo "build time $((t2 - t1)) s build + smoke, $((t1 - t0)) s base image, $((t2 - t0)) s total"
