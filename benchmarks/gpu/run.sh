#!/usr/bin/env bash
# opt-fast's GPU run kit. In one call on a lent GPU machine (no package registry; its own python3 with torch, triton
# and jax for CUDA 13; no mujoco, mujoco-mjx or gymnasium): install the carried wheels and opt-fast from this
# source, run the GPU tests, then `python benchmarks/report.py`, and leave the page and the logs under $OUT.
# Without CUDA the same steps run with the GPU tests only collected, so the kit can be tried on any machine.
#
#   benchmarks/gpu/fetch_wheels.sh    # first, where a registry is reachable: fills benchmarks/gpu/wheels/
#   benchmarks/gpu/run.sh             # on the device; README.md ("GPU run kit") gives the exact device call
#
# Environment (all optional):
#   KIT_BUDGET_S     seconds for everything (default 450, inside the call's timeout_s of 480)
#   KIT_TESTS_S      most seconds for the GPU tests (default 200); the report gets what is left
#   KIT_REPORT_ARGS  extra pytest arguments for benchmarks/report.py, e.g. "-k 'kernels or envs'"
#   OUT              where the logs and the page go (set by the device tool; default ./gpu-kit-out)
#   PYTHON           the interpreter (default python3: on the device, the one that holds torch)
#   KIT_SITE         install folder, put first on PYTHONPATH (default /tmp/opt-fast-kit-site)
#   KIT_WHEELS       the wheel folder (default benchmarks/gpu/wheels; another Python needs its own set, made by
#                    fetch_wheels.sh with KIT_PY and KIT_WHEELS)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
start=$SECONDS
budget=${KIT_BUDGET_S:-450}
tests_max=${KIT_TESTS_S:-200}
python=${PYTHON:-python3}
site=${KIT_SITE:-/tmp/opt-fast-kit-site}
out=${OUT:-$root/gpu-kit-out}
mkdir -p "$out"
# The device tool brings back at most 8 files from $OUT: summary.txt, setup.log, tests.log, tests-junit.xml,
# report.log and the page.
summary=$out/summary.txt
: >"$summary"

# Packages go to their own folder, first on the path: the image's environment stays as it is (it may not be
# writable), and a carried version wins over any the image holds.
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
# Don't put the working directory on sys.path: the source tree's opt_fast/ has no built _replay module and would
# shadow the installed package.
export PYTHONSAFEPATH=1
export PYTHONUNBUFFERED=1 OPT_FAST_PROGRESS=0
# JAX takes 75% of the GPU's memory at start by default; torch shares the GPU in the same processes.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Triton must compile the kernels for the GPU: tests/conftest.py chooses the interpreter only without CUDA.
unset TRITON_INTERPRET

left() { echo $((budget - (SECONDS - start))); }
note() { echo "$*" | tee -a "$summary"; }
# step NAME LOG LIMIT CMD...: run CMD with a hard time limit, append its output to LOG, record the outcome.
step() {
    local name=$1 log=$2 limit=$3 t0=$SECONDS rc=0
    shift 3
    if [ "$limit" -le 0 ]; then
        note "$(printf '%-8s %-22s %4ss  %s' "$name" "not run" 0 "no time left")"
        return 1
    fi
    echo "=== $name: $* (limit ${limit}s)" >>"$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    local what="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        what="killed at its limit"
    elif [ "$rc" -ne 0 ]; then
        what="exit $rc"
    fi
    local cmd="$*"
    note "$(printf '%-8s %-22s %4ss  %s' "$name" "$what" $((SECONDS - t0)) "${cmd:0:100}")"
    return "$rc"
}
finish() {
    note "total    $((SECONDS - start))s of ${budget}s; logs and page in $out"
    echo "--- $summary"
    cat "$summary"
}
trap finish EXIT

# ---------------------------------------------------------------------------------------------- setup
setup=$out/setup.log
: >"$setup"
mapfile -t pins < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' benchmarks/gpu/wheels.txt)
shopt -s nullglob
wheel_dir=${KIT_WHEELS:-benchmarks/gpu/wheels}
wheels=("$wheel_dir"/*.whl)
if [ "${#wheels[@]}" -ne "${#pins[@]}" ]; then
    note "setup: ${#wheels[@]} wheels in $wheel_dir for ${#pins[@]} pins: run benchmarks/gpu/fetch_wheels.sh" \
         "and carry benchmarks/gpu/wheels"
    exit 1
fi
{
    echo "date: $(date -u +%FT%TZ); host: $(uname -srm); python: $(command -v "$python")"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo "unknown (no .git in this copy)")"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: none"
} >>"$setup"
# What the kit relies on the image for (device-has.txt): a missing one is named here, then fails where it is used.
step check "$setup" 60 "$python" - benchmarks/gpu/device-has.txt <<'EOF' || true
import sys
from importlib import metadata
print(sys.version)
missing = []
for line in open(sys.argv[1]):
    name = line.split("#")[0].strip()
    if name:
        try:
            print(f"  {name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
if missing:
    sys.exit(f"the image lacks {', '.join(missing)}: add their wheels to benchmarks/gpu/wheels.txt")
EOF
# --no-deps: their other requirements are the image's (device-has.txt); --no-index: there is no registry.
step wheels "$setup" "$(( $(left) < 120 ? $(left) : 120 ))" \
    "$python" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${wheels[@]}"
# The C++ replay buffer is built here, against the image's Python, with the carried pybind11 and
# scikit-build-core and the image's cmake and ninja (no build isolation: nothing can be fetched).
step build "$setup" "$(( $(left) < 240 ? $(left) : 240 ))" \
    "$python" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target "$site" .
# Everything imports from the install, the GPU is seen by torch, Triton and JAX, and the carried packages'
# requirements are met by the image.
step imports "$setup" 120 "$python" - "$site" "${pins[@]}" <<'EOF'
import sys
from importlib import metadata

from packaging.requirements import Requirement

site, pins = sys.argv[1], sys.argv[2:]
import gymnasium, jax, mujoco, opt_fast, opt_fast._replay, torch  # noqa: E401
from mujoco import mjx  # noqa: F401

from kernels import ensemble_mlp

assert opt_fast.__file__.startswith(site), f"opt_fast imported from {opt_fast.__file__}, not the install"
print(f"opt_fast {opt_fast.__file__}; torch {torch.__version__}, CUDA {torch.cuda.is_available()}"
      f"{' ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}; triton interpreted: "
      f"{ensemble_mlp.INTERPRETED}; jax {jax.__version__} on {jax.default_backend()} {jax.devices()}; "
      f"mujoco {mujoco.__version__}; gymnasium {gymnasium.__version__}")
unmet = []
for pin in pins:
    for text in metadata.requires(pin.split("==")[0]) or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            if not req.specifier.contains(metadata.version(req.name), prereleases=True):
                unmet.append(f"{pin} needs {req} (found {metadata.version(req.name)})")
        except metadata.PackageNotFoundError:
            unmet.append(f"{pin} needs {req} (not installed)")
print("\n".join(unmet) or "every requirement of the carried wheels is met")
if torch.cuda.is_available():
    assert not ensemble_mlp.INTERPRETED, "Triton runs interpreted on a CUDA machine"
    if jax.default_backend() != "gpu":
        print("WARNING: JAX sees no GPU: MJX runs on the CPU")
EOF
gpu=$("$python" -c 'import torch; print(int(torch.cuda.is_available()))')
note "GPU: $([ "$gpu" = 1 ] && echo yes || echo "none: the GPU tests are only collected")"

# ---------------------------------------------------------------------------------------------- GPU tests
# Triton kernels compiled for the device (test_kernels, test_backends), compiled updates through CUDA graphs against
# eager ones (test_compile), MJX on the GPU against gymnasium (test_mjx_envs) and the trainer on MJX
# (test_env_backend). --session-timeout stops between tests, so the JUnit file and the log stay whole.
GPU_TESTS=(tests/test_kernels.py tests/test_backends.py tests/test_compile.py tests/test_mjx_envs.py
           tests/test_env_backend.py)
tests_log=$out/tests.log
: >"$tests_log"
cap=$(( $(left) - 150 < tests_max ? $(left) - 150 : tests_max ))  # keep at least 150 s for the report
cap=$(( cap < 30 ? 30 : cap ))
if [ "$gpu" = 1 ]; then
    step tests "$tests_log" $((cap + 60)) "$python" -m pytest -v -p no:cacheprovider -rs --durations=15 \
        --timeout=150 --session-timeout="$cap" --junitxml="$out/tests-junit.xml" "${GPU_TESTS[@]}" || true
else
    # On a CPU the files must still import and their tests collect: the list and the carried packages are right.
    step tests "$tests_log" 120 "$python" -m pytest --collect-only -q -p no:cacheprovider "${GPU_TESTS[@]}" || true
fi

# ---------------------------------------------------------------------------------------------- benchmark report
report_log=$out/report.log
: >"$report_log"
# eval: KIT_REPORT_ARGS is shell words, quotes kept ("-k 'replay or envs'"); it comes from whoever runs the kit.
eval "extra=(${KIT_REPORT_ARGS:-})"
step report "$report_log" $(( $(left) - 10 )) "$python" benchmarks/report.py --timeout=150 \
    --session-timeout=$(( $(left) - 60 > 30 ? $(left) - 60 : 30 )) "${extra[@]}" || true
for log in "$tests_log" "$report_log"; do
    if grep -q "session-timeout: .* exceeded" "$log"; then
        note "$(basename "$log" .log): stopped at its session timeout; the tests after that point did not run"
    fi
done
page=$(sed -n 's/^wrote //p' "$report_log" | tail -1)
if [ -n "$page" ] && [ -f "$page" ]; then
    cp "$page" "$out/"
    note "page     $(basename "$page")"
else
    note "page     none written (see report.log)"
fi
