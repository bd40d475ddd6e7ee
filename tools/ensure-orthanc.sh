#!/usr/bin/env bash
# The PACS tests (tests/pacs) run a real Orthanc with its DICOMweb plugin, both from Debian (no
# download is possible); they fail, never skip, without them. Install them when missing and we may
# (root + apt-get).
set -euo pipefail
PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || MISSING=1
[ -f "$PLUGIN" ] || MISSING=1
[ -z "${MISSING:-}" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        orthanc orthanc-dicomweb >/dev/null
    # Debian's package starts a system Orthanc (port 8042); the tests start their own on free ports.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now orthanc >/dev/null 2>&1 || true; fi
else
    echo "make test: Orthanc is missing; install it (sudo apt-get install orthanc orthanc-dicomweb) for the PACS tests" >&2
fi
