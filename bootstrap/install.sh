#!/usr/bin/env bash
# Installs everything Beachhead, its demo and its tests need, idempotently:
# Debian packages (as root) and the Python environment in .venv.
# Usage: bash bootstrap/install.sh [extra...]   e.g. `bash bootstrap/install.sh bench`
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openssh-server openssh-client sudo openssl iproute2 util-linux ca-certificates
  golang-go golang-github-vmware-govmomi-dev # the lab's vCenter launcher
  dnsmasq-base isc-dhcp-client               # the lab's DHCP server and its guests' client
  cloud-init                                 # the real client the metadata server is tested with
  postgresql libpq5                          # the metadata server's shared store (tests start their own server)
  qemu-system-x86 qemu-system-data           # the lab's console VM (TCG) and its firmware
  libxkbcommon-dev xkb-data libx11-data      # keyboard layouts (xkb-data through libxkbcommon) and libX11's Compose table
  gcc python3-dev                            # PyPI xkbcommon has no wheel: pip builds its cffi module
  busybox-static dropbear-bin                # the console VM's initramfs: shell, SSH server for its recipes
  fonts-dejavu-core                          # the pty consoles' screenshots are drawn in DejaVu Sans Mono
  xrdp xorgxrdp freerdp2-shadow-x11 xvfb xterm # the RDP consoles the rdp keys backend is tested against
  tigervnc-standalone-server tigervnc-tools x11-xkb-utils # the VNC consoles (Xvnc, vncpasswd, setxkbmap) the vnc keys backend is tested against
  tesseract-ocr tesseract-ocr-eng            # OCR of console screenshots (<waitFor>, verify)
)
case ",${1:-}," in
  *,bench,*) APT_PACKAGES+=(nginx-light) ;; # the metadata benchmark's baseline
esac
PYTHON=${PYTHON:-python3}
EXTRAS="test${1:+,$1}"

say() { printf 'install: %s\n' "$*" >&2; }

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing Debian packages: ${missing[*]} (run this script as root, or install them)"
    exit 1
  fi
  say "apt-get install ${missing[*]}"
  # Keep package scripts from starting the system sshd: the demo and tests start their own.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
  fi
  trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# cloud-init is here as a client library for the tests: it must never run at this
# machine's boot (it would probe for metadata services). nginx-light likewise only
# serves in the benchmark, started by it on loopback.
if [ -d /etc/cloud ] && [ ! -e /etc/cloud/cloud-init.disabled ] && [ "$(id -u)" -eq 0 ]; then
  touch /etc/cloud/cloud-init.disabled
fi
if command -v systemctl >/dev/null && [ "$(id -u)" -eq 0 ]; then
  systemctl disable --quiet nginx 2>/dev/null || true
  systemctl disable --quiet postgresql 2>/dev/null || true # tests start their own, on loopback
  systemctl disable --quiet xrdp xrdp-sesman 2>/dev/null || true # tests and the lab start their own
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  say "Python 3.11 or newer is required ($PYTHON is $("$PYTHON" --version 2>&1))"
  exit 1
}
[ -x .venv/bin/python ] || { say "creating .venv"; "$PYTHON" -m venv .venv; }

# The repository's folders are installed as the one package `beachhead`
# (beachhead.agent, beachhead.plugins, ...): an editable install in setuptools' strict
# mode links every file of the package into a tree that Python and mypy both read.
# It links the files that exist at install time, so reinstall when the project's
# dependencies, the requested extras or the list of its files changed.
stamp=.venv/.beachhead-installed
package_files=$(find agent plugins metadata_server bootstrap -type f ! -path '*/__pycache__/*' | LC_ALL=C sort)
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $(printf '%s\n' "$package_files" | sha256sum | cut -d' ' -f1) $EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "pip install -e .[$EXTRAS] (strict editable mode)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    --config-settings editable_mode=strict -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi

# cloudbase-init, the Windows guests' client, in a virtualenv of its own (its oslo.*
# dependencies need not agree with Beachhead's): the tests drive its metadata-service
# classes and config loader from there, and the lab's win-01 runs them at boot.
CLOUDBASE_INIT=cloudbase-init==1.1.9
cloudbase_venv=.venv-cloudbase-init
if [ "$(cat "$cloudbase_venv/.installed" 2>/dev/null)" != "$CLOUDBASE_INIT" ]; then
  say "pip install $CLOUDBASE_INIT into $cloudbase_venv"
  [ -x "$cloudbase_venv/bin/python" ] || "$PYTHON" -m venv "$cloudbase_venv"
  "$cloudbase_venv/bin/python" -m pip install --quiet --disable-pip-version-check "$CLOUDBASE_INIT"
  echo "$CLOUDBASE_INIT" > "$cloudbase_venv/.installed"
fi
say "ready: .venv/bin/beachhead"
