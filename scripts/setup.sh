#!/usr/bin/env bash
# Installs everything the app and its tests need: Debian packages (once) and a
# virtual environment in .venv from requirements.txt. Safe to run again; it
# only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# dlib is built from source: a C++ compiler and make besides cmake (preinstalled on most images; a bare one lacks them).
APT_PACKAGES=(cmake g++ make libopenblas-dev liblapack-dev)
# Debian's own Python needs its venv module and headers as packages (a pyenv or official build has both).
case "$(command -v "${PYTHON:-python3}")" in /usr/bin/*) APT_PACKAGES+=(python3-venv python3-dev) ;; esac
if [ "${WITH_BROWSER:-0}" = 1 ]; then
  APT_PACKAGES+=(chromium chromium-driver fonts-dejavu-core)
  # The camera tests: ffmpeg pushes an RTSP stream to a small relay (RTSP::Server, run with perl, no service);
  # the app itself reads cameras with OpenCV's own FFmpeg.
  APT_PACKAGES+=(ffmpeg librtsp-server-perl)
  APT_PACKAGES+=(mosquitto)  # the MQTT tests start a private broker (the app only needs one when FACES_MQTT_URL is set)
fi
# The cluster tests, and scripts/cluster.sh: a private Redis and HAProxy in front of several server.py processes;
# the PostgreSQL tests start a private server (the app only needs one when FACES_DATABASE_URL is set).
if [ "${WITH_BROWSER:-0}" = 1 ] || [ "${WITH_CLUSTER:-0}" = 1 ]; then
  APT_PACKAGES+=(redis-server haproxy postgresql)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# dlib is built once per machine, against OpenBLAS and, where the CPU has them,
# with AVX2 and FMA: HOG detection 23 ms instead of 43 ms, the ResNet 11 ms a
# face instead of 14 ms (README, "Speed"). The wheel is kept outside the project.
DLIB_VERSION=$(sed -n 's/^dlib==//p' requirements.txt)
WHEELS=${FACES_WHEEL_DIR:-$HOME/.cache/faces-app/wheels}
if ! ls "$WHEELS"/dlib-"$DLIB_VERSION"-*.whl >/dev/null 2>&1; then
  flags="-O3"
  if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then flags="-O3 -mavx2 -mfma"; fi
  echo "setup: building dlib $DLIB_VERSION ($flags; about 9 minutes on 2 cores, once per machine)" >&2
  .venv/bin/pip install -q --upgrade pip
  CFLAGS="$flags" CXXFLAGS="$flags" .venv/bin/pip wheel -q --no-cache-dir --no-deps -w "$WHEELS" "dlib==$DLIB_VERSION"
fi

# requirements.lock: every package the two requirement files pull in, at the version last tested.
# It is a constraints file (-c): it pins versions, installs nothing by itself.
# FACES_REFRESH_LOCK=1 installs the newest versions the requirement files allow and rewrites it.
write_lock() {
  {
    sed -n '/^#/p' requirements.lock 2>/dev/null || true
    .venv/bin/python - requirements.txt requirements-dev.txt <<'PY'
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

todo = []
for path in sys.argv[1:]:
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            todo.append((Requirement(line), {""}))
found = {}  # canonical name -> (name, version, extras followed)
while todo:
    req, parent_extras = todo.pop()
    if req.marker is not None and not any(req.marker.evaluate({"extra": extra}) for extra in parent_extras):
        continue
    try:
        dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
        continue
    key = canonicalize_name(req.name)
    done = found.get(key, (None, None, None))[2]
    extras = set(req.extras) | {""}
    if done is not None and extras <= done:
        continue
    found[key] = (dist.metadata["Name"], dist.version, extras | (done or set()))
    todo.extend((Requirement(dep), extras) for dep in dist.requires or [])
for key in sorted(found.keys() - {"pip", "setuptools", "wheel"}):  # left to the venv, as pip freeze does
    name, version, _ = found[key]
    print(f"{name}=={version}")
PY
  } > requirements.lock.new
  mv requirements.lock.new requirements.lock
  echo "setup: wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages); run ./test.sh before committing it" >&2
}

stamp=.venv/.requirements.sha
want=$(cat requirements.txt requirements-dev.txt requirements.lock "$WHEELS"/dlib-"$DLIB_VERSION"-*.whl | sha256sum | cut -d' ' -f1)
if [ "${FACES_REFRESH_LOCK:-0}" = 1 ]; then
  echo "setup: upgrading Python packages within requirements*.txt, then rewriting requirements.lock" >&2
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q --upgrade --find-links "$WHEELS" -r requirements.txt -r requirements-dev.txt
  write_lock
  cat requirements.txt requirements-dev.txt requirements.lock "$WHEELS"/dlib-"$DLIB_VERSION"-*.whl | sha256sum | cut -d' ' -f1 > "$stamp"
elif [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages" >&2
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q --find-links "$WHEELS" -r requirements.txt -r requirements-dev.txt -c requirements.lock
  echo "$want" > "$stamp"
fi
