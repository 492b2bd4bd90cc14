#!/usr/bin/env bash
# Make sure the Debian packages the demo and the tests run for real are installed:
# Mosquitto (broker and command-line clients) and InfluxDB for everything, plus
# LibreOffice, poppler and a CJK font for the report's render test (`--for test`).
# As root, install what is missing; otherwise say exactly what to install (or to use
# docker compose instead).
set -euo pipefail

purpose=${2:-demo}
[ "${1:-}" = "--for" ] || purpose=demo

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v influxd >/dev/null 2>&1 || missing+=(influxdb)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# The report test renders the workbook: LibreOffice (headless) to PDF, poppler to
# pixels and text, and a CJK font so the Chinese names are drawn, not boxes.
if [ "$purpose" = "test" ]; then
  command -v soffice >/dev/null 2>&1 || missing+=(libreoffice-calc-nogui)
  command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
  fc-list 2>/dev/null | grep -qi -e wqy -e 'noto.*cjk' || missing+=(fonts-wqy-zenhei)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian may start the packaged services; the project runs its own on free ports.
  exit 0
fi

cat >&2 <<MSG
Missing system packages: ${missing[*]}
Install them with:
    sudo apt-get install ${missing[*]}
or run the whole stack in containers instead:
    docker compose up
MSG
exit 1
