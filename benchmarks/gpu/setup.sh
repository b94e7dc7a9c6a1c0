#!/usr/bin/env bash
# Run FIRST in every call on the lent GPU machine (it starts bare): installs the wheels carried in .whl/ (from
# benchmarks/gpu/fetch_wheels.sh) into /tmp/site, joins a large wheel (warp-lang) once all its pieces were carried
# (<wheel>.part-aa, -ab, -ac in .whl/, one per call into a still-warm machine), puts the repository on PYTHONPATH and reports what works:
#     source benchmarks/gpu/setup.sh        # then: python -m cgkd.cli aa --platform CUDA ...
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
for p in .whl/*.whl.part-*; do [ -e "$p" ] && cp "$p" /tmp/; done   # a piece of a large wheel carried in this call
parts=(/tmp/*.whl.part-*)
if [ -e "${parts[0]}" ] && [ "${#parts[@]}" -ge "${WHEEL_PARTS:-3}" ]; then  # all pieces here: join and install
  whl="/tmp/$(basename "${parts[0]}" | sed 's/\.part-.*//')"
  cat "${parts[@]}" > "$whl" && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$whl"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import importlib
for name in ("torch", "openmm", "openmmtorch", "warp", "torchmdnet", "cgkd"):
    try:
        m = importlib.import_module(name)
        print(f"{name:12s} ok {getattr(m, '__version__', '')}")
    except Exception as e:  # report, do not stop: AA runs need only openmm
        print(f"{name:12s} MISSING ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
import openmm
print("OpenMM platforms:", [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())])
import torch
print("torch CUDA:", torch.cuda.is_available(), torch.version.cuda)
PY
