#!/usr/bin/env bash
# The DICOM SEG conformance test runs David Clunie's validator dciodvfy (Debian's dicom3tools) on
# the SEGs ragsam writes; it fails, never skips, without it. Install it when missing and we may.
set -euo pipefail
command -v dciodvfy >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null
else
    echo "make test: dciodvfy is missing; install it (sudo apt-get install dicom3tools) for the DICOM SEG tests" >&2
fi
