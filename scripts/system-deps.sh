#!/usr/bin/env bash
# Installs the Debian packages a task needs, when they are missing and we may (root, or sudo without a password).
#   scripts/system-deps.sh venv PY   python3-venv, when PY cannot create a virtual environment
#   scripts/system-deps.sh console   libportaudio2 (LiveKit's console imports sounddevice even in text mode)
#   scripts/system-deps.sh test      the above, plus PostgreSQL, redis-server, espeak-ng and sox (voice tests), and
#                                    chromium and chromium-driver (the inspector's pages in a headless browser)
set -euo pipefail

case "${1:-}" in
  venv)
    "${2:-python3.11}" -c "import ensurepip, venv" 2>/dev/null && exit 0
    packages=("$(basename "${2:-python3.11}")-venv") ;;
  console) packages=(libportaudio2) ;;
  test)    packages=(libportaudio2 postgresql redis-server espeak-ng sox chromium chromium-driver) ;;
  *) echo "usage: $0 venv PYTHON | console | test" >&2; exit 2 ;;
esac

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "Please install these with your system's package manager: ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "Missing Debian packages: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "Installing ${missing[*]} (apt-get)..." >&2
"${as_root[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >&2
