#!/usr/bin/env bash
# The Debian packages the test suite drives for real (no browser or server download is possible
# here): chromium (the app's browser tests, through Playwright), dicom3tools (dciodvfy, the DICOM SEG
# validator) and orthanc + orthanc-dicomweb (the PACS tests). Tests that need one FAIL, never skip,
# without it. The missing ones are installed in one apt-get run when we may (root + apt-get).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
{ command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } || missing+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian's orthanc starts a system server (port 8042); the tests start their own on free ports.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now orthanc >/dev/null 2>&1 || true; fi
else
    echo "make test: missing Debian packages for the tests: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
fi
