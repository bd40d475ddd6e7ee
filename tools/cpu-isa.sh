#!/usr/bin/env bash
# Run a command as if on a CPU with fewer vector instructions, to see how a test's numbers move
# with another CPU's float rounding (docs/testing.md). torch's own kernels follow
# ATEN_CPU_CAPABILITY; matrix products go through MKL (MKL_ENABLE_INSTRUCTIONS) and
# convolutions through oneDNN (ONEDNN_MAX_CPU_ISA), which choose their code path separately.
#   native   this CPU as it is (e.g. AVX-512)
#   avx2     AVX2 + FMA, no AVX-512 (e.g. an AMD EPYC of the Zen 2/3 generations)
#   default  SSE4.2 only: torch's non-vectorised kernels
# Example: tools/cpu-isa.sh avx2 env RAGSAM_TEST_THREADS=2 python -m pytest -q tests/training/test_rag_run.py
set -euo pipefail
profile=${1:?usage: tools/cpu-isa.sh native|avx2|default COMMAND...}
shift
case "$profile" in
  native) ;;
  avx2) export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
  default) export ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 ;;
  *) echo "tools/cpu-isa.sh: unknown profile '$profile' (native, avx2 or default)" >&2; exit 2 ;;
esac
exec "$@"
