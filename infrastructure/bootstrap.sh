#!/usr/bin/env bash
# Idempotent setup: Debian packages, the project virtualenv, then Maven jars (via `rtap setup`).
# Fast when nothing is missing: each step compares a stamp with what it would install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
apt_packages=(redis-server prometheus prometheus-redis-exporter chromium wrk)

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || { say "missing Debian packages ${missing[*]} and no apt-get"; exit 1; }
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  say "installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages start system services on install; the project runs its own copies.
  for svc in redis-server prometheus prometheus-redis-exporter; do "${sudo_cmd[@]}" service "$svc" stop >/dev/null 2>&1 || true; done
fi

command -v java >/dev/null || { say "Java 17+ is required (java not found on PATH)"; exit 1; }
command -v mvn >/dev/null || { say "Maven is required (mvn not found on PATH)"; exit 1; }

stamp="$venv/.rtap-deps"
want="$(cat "$root/pyproject.toml" "$root/requirements.lock" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages into .venv (first run takes a few minutes)"
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -r "$root/requirements.lock"
  "$venv/bin/pip" install -q --no-deps -e "$root"
  echo "$want" > "$stamp"
fi

"$venv/bin/rtap" setup --quiet
