#!/usr/bin/env bash
# The one prepared job for a lent GPU (an H200 for about 15 minutes, 10 per command): the study's
# "scale" rows of docs/study.yaml, i.e. full-width PreAct ResNet-18 PGD-AT and C-LEAD for 15 epochs
# with the current recipe, each evaluated (clean on the whole test split; FGSM, PGD-20, CW, APGD-CE,
# APGD-T and AutoAttack on 1,000 test images), then docs/robustness.md regenerated. Every step
# resumes, so a second call finishes what a first one left. The reports name the GPU they ran on.
#
#   scripts/gpu_scale.sh            on the GPU machine, from the repository root (PYTHONPATH=. is set)
#   scripts/gpu_scale.sh --smoke    a check on any machine: 1 epoch on 1,024 images, small evaluations,
#                                   everything under runs/gpu-smoke/ (the repository's files untouched)
#
# DATA (default ../shared/data/cifar10) is the dataset, DEADLINE (default 540 s) stops the jobs still
# running, so that the device's 10-minute command limit leaves time to write the report.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DATA=${DATA:-../shared/data/cifar10}
DEADLINE=${DEADLINE:-540}
ROWS="PGD-AT full width,C-LEAD full width"

missing=$("$PY" - <<'PY'
import importlib.util
need = ("torch", "torchattacks", "yaml", "tqdm", "matplotlib", "numpy", "PIL")
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
  echo "gpu_scale.sh: missing Python packages: $missing (install them, e.g. from wheels carried along)" >&2
  exit 2
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu (no CUDA)')"

if [[ "${1:-}" == "--smoke" ]]; then
  "$PY" -m training study --spec docs/study.yaml --only "$ROWS" --jobs 2 --smoke --prefix runs/gpu-smoke --data "$DATA"
  "$PY" -m training report --spec docs/study.yaml --root runs/gpu-smoke --out runs/gpu-smoke/robustness.md
  echo "smoke run done: runs/gpu-smoke/"
  exit 0
fi
# Both rows at once: two small models leave most of an H200 idle, so they share it.
status=0
"$PY" -m training study --spec docs/study.yaml --only "$ROWS" --jobs 2 --deadline "$DEADLINE" --data "$DATA" || status=$?
"$PY" -m training report --spec docs/study.yaml --out docs/robustness.md
exit $status
