#!/usr/bin/env bash
# The one script to run on a GPU machine, from the repo root: environment, the CUDA tests and
# benchmarks/gpu.py, each step under its own timeout so the whole run ends within ~8 minutes,
# and no step's failure stops the later ones.  Everything it writes lies under $OUT.
# Installs nothing from the network: wheels carried in .whl/ go to /tmp/site, and the repo is
# installed offline (editable, no build isolation) or, failing that, mapped by a .pth shim.
set -u
OUT="${OUT:-./gpu-out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 1
PY=python3
START=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$OUT/steps.txt"; }

{
  echo "## date"; date -u
  echo "## nvidia-smi"; timeout 30 nvidia-smi 2>&1 || echo "nvidia-smi failed"
  echo "## versions"
  timeout 60 $PY - <<'PYEOF' 2>&1
import sys
print("python", sys.version)
for name in ("torch", "numpy", "llvmlite", "networkx"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:
        print(name, "unavailable:", e)
try:
    import torch
    print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("gpu", torch.cuda.get_device_name(0))
except Exception as e:
    print("torch cuda: unavailable:", e)
from importlib import metadata
for dist in ("cuda-python", "cuda-bindings", "nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu13",
             "setuptools", "pip"):
    try:
        print(dist, metadata.version(dist))
    except Exception:
        print(dist, "not installed")
PYEOF
} > "$OUT/env.txt" 2>&1
log "env written"

if compgen -G ".whl/*.whl" > /dev/null; then
  timeout 120 $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    > "$OUT/install.txt" 2>&1 && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  log "carried wheels installed (rc $?)"
fi

# neurenix.compiler and neurenix.runtime live in compiler/ and runtime/ (pyproject's
# package-dir), so the repo on PYTHONPATH alone does not import them.
if ! timeout 60 $PY -c "import neurenix.compiler, neurenix.runtime" 2>/dev/null; then
  timeout 180 $PY -m pip install -q --no-build-isolation --no-deps -e . \
    >> "$OUT/install.txt" 2>&1
  log "pip install --no-build-isolation --no-deps -e . (rc $?)"
fi
if ! timeout 60 $PY -c "import neurenix.compiler, neurenix.runtime" 2>/dev/null; then
  # no setuptools: a package tree of symlinks laid out as pyproject's package-dir maps it
  rm -rf /tmp/neurenix-shim && mkdir -p /tmp/neurenix-shim/neurenix
  ln -s "$PWD"/neurenix/* /tmp/neurenix-shim/neurenix/
  ln -s "$PWD/compiler" /tmp/neurenix-shim/neurenix/compiler
  ln -s "$PWD/runtime" /tmp/neurenix-shim/neurenix/runtime
  export PYTHONPATH="/tmp/neurenix-shim${PYTHONPATH:+:$PYTHONPATH}"
  log "symlinked package tree at /tmp/neurenix-shim"
fi
timeout 60 $PY -c "import neurenix, neurenix.compiler, neurenix.runtime; print(neurenix.__file__)" \
  >> "$OUT/env.txt" 2>&1
log "import check (rc $?)"

export NEURENIX_REQUIRE_DEVICES=cuda
TESTS=()
for t in tests/test_runtime_cuda.py tests/test_compile_parity.py tests/test_device_training.py \
         tests/test_tf32_mma.py tests/test_dynamic_cuda_hip.py \
         tests/test_codegen_cuda_hip.py; do
  [ -f "$t" ] && TESTS+=("$t")
done
timeout 200 $PY -m pytest -q --maxfail=25 -p no:cacheprovider -k cuda "${TESTS[@]}" 2>&1 | tail -n 400 > "$OUT/tests.txt"
log "tests (rc ${PIPESTATUS[0]})"
unset NEURENIX_REQUIRE_DEVICES

timeout 250 $PY benchmarks/gpu.py --device cuda --timeout 110 --json "$OUT/gpu.json" \
  --markdown > "$OUT/gpu.md" 2> "$OUT/gpu.log"
log "benchmark (rc $?)"
log "done"
exit 0
