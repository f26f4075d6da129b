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

# A Python with its shared libpython, which the `python` feature links (pyo3). pyenv and
# python.org builds have one; Debian's comes with python3-dev.
ensure_python_dev() {
  local py="${PYO3_PYTHON:-python3}"
  if "$py" -c 'import os, sys, sysconfig
lib = os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("LDLIBRARY") or "")
sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") and os.path.exists(lib) else 1)' 2>/dev/null; then
    return
  fi
  echo ">> $py has no shared libpython: installing Debian's python3-dev with apt-get" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-dev python3-venv >/dev/null
}

# The Python prometheus_client package, whose OpenMetrics parser the metrics tests read the
# /metrics page with.
ensure_prometheus_client() {
  local py="${RQ_TEST_PYTHON:-python3}"
  if "$py" -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
    return
  fi
  echo ">> Python prometheus_client is missing: installing it with pip" >&2
  "$py" -m pip install --quiet --disable-pip-version-check prometheus_client 2>/dev/null \
    || "$py" -m pip install --quiet --disable-pip-version-check --break-system-packages prometheus_client
}
