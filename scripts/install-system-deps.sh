#!/usr/bin/env bash
# Install the Debian packages that rpm.localservices and the tests need.
#
# Usage: scripts/install-system-deps.sh [EXTRA_PACKAGE...]     e.g. ... chromium
#
# Idempotent: installs only what dpkg lacks, running `apt-get update` once and only then.
# Runs as root, or through sudo when there is one.
#
# We run our own PostgreSQL and Mosquitto (rpm.localservices), so the system-wide services
# these packages bring must not start: a policy-rc.d that answers 101 ("not allowed") stops
# invoke-rc.d and deb-systemd-invoke from starting them during the install, and afterwards each
# service of a package installed here is stopped (and disabled where systemd runs) in case
# something started it anyway. Services of packages that were already installed are left alone.
# postgresql-15 is in Debian bookworm; other releases need a repository that carries it.
# postgresql-15-partman (pg_partman 4.7) makes the monthly partitions of readings on plain
# PostgreSQL (docs/data-lifecycle.md); without it the project makes them itself.
set -euo pipefail

packages=(mosquitto mosquitto-clients postgresql-15 postgresql-15-partman "$@")

as_root=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "install-system-deps: needs root, and sudo is not available" >&2
    exit 1
  fi
fi

installed() {
  dpkg -s "$1" 2>/dev/null | grep -qx 'Status: install ok installed'
}

missing=()
for pkg in "${packages[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-system-deps: already installed: ${packages[*]}"
  exit 0
fi
echo "install-system-deps: installing ${missing[*]}"

policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then # keep one that exists: container images often ship their own
  printf '#!/bin/sh\n# install-system-deps.sh: start no service while it runs\nexit 101\n' |
    "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod 0755 "$policy"
  own_policy=1
fi
remove_policy() {
  if [[ $own_policy -eq 1 ]]; then
    "${as_root[@]}" rm -f "$policy"
  fi
}
trap remove_policy EXIT

apt() {
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}
apt update
apt install "${missing[@]}"

# quiet_stop SERVICE: stop it whichever init tools exist; none of them may be there.
quiet_stop() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    "${as_root[@]}" systemctl disable --now "$1" >/dev/null 2>&1 || true
  fi
  if command -v service >/dev/null 2>&1; then
    "${as_root[@]}" service "$1" stop >/dev/null 2>&1 || true
  fi
}

for pkg in "${missing[@]}"; do
  case $pkg in
  mosquitto) quiet_stop mosquitto ;;
  haproxy) quiet_stop haproxy ;;
  postgresql-15)
    quiet_stop postgresql
    if command -v pg_ctlcluster >/dev/null 2>&1; then
      "${as_root[@]}" pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
    fi
    ;;
  esac
done
echo "install-system-deps: done"
