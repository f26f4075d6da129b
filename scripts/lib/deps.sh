# Sourced by scripts/*: installs what is missing, saying so. Safe to run again.

# redis-server from Debian's packages.
ensure_redis() {
  if command -v redis-server >/dev/null 2>&1; then
    return
  fi
  echo ">> redis-server is missing: installing Debian's redis-server with apt-get" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
}

# Python RQ 2.12, used as producer and reader by the demo and the interop tests.
ensure_rq() {
  local py="${RQ_TEST_PYTHON:-python3}"
  if "$py" -c 'import rq, sys; sys.exit(0 if rq.__version__.startswith("2.12.") else 1)' 2>/dev/null; then
    return
  fi
  echo ">> Python rq 2.12 is missing: installing rq==2.12.* with pip" >&2
  "$py" -m pip install --quiet --disable-pip-version-check 'rq==2.12.*' 2>/dev/null \
    || "$py" -m pip install --quiet --disable-pip-version-check --break-system-packages 'rq==2.12.*'
}
