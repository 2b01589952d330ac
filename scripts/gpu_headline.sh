#!/usr/bin/env bash
# The cifar10-headline suite in one short GPU window: scripts/gpu_headline.sh OUTDIR [MINUTES]
#
# Why: GPUs reach this project rarely and briefly (about 15 min in all, 10 min per command), so
# one prepared command measures the device (throughput, ADTN generation, the cost-model
# calibration) and then spends MINUTES (default 5) on the suite, in priority order, starting no
# job the calibration says would not finish. Everything lands in OUTDIR as it goes: a killed
# window keeps what finished, and `run_all.py --suite cifar10-headline --out OUTDIR/results`
# later resumes with the rest. See docs/GPU.md.
#
# Runs with the machine's own python3 (torch installed; not this project's venv). Missing
# pure-Python dependencies are installed from wheels carried in .whl/ (no index needed);
# CIFAR-10 is read from .cifar10/cifar-10-batches-py/ (carried; never downloaded).
set -u -o pipefail

OUT=${1:?usage: scripts/gpu_headline.sh OUTDIR [MINUTES]}
MINUTES=${2:-5}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 TNBENCH_DATA="$PWD/.cifar10"
TABLE="$OUT/throughput.md"
T0=$(date +%s)

log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/logs/steps.log"; }
step() {  # step NAME TIMEOUT_S CMD...: run, tee its log, never longer than TIMEOUT_S
    local name=$1 limit=$2; shift 2
    log "start $name (at most ${limit}s): $*"
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/logs/$name.log"
    local rc=${PIPESTATUS[0]}
    log "end $name: exit $rc"
    return 0
}

# 1. the device
log "gpu check"
{ nvidia-smi || echo "nvidia-smi: not found"; } > "$OUT/gpu.txt" 2>&1
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/gpu.txt"
import sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("no CUDA device: this script is for a GPU window")
p = torch.cuda.get_device_properties(0)
print(f"device 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16: {torch.cuda.is_bf16_supported()}")
EOF
if [ "${PIPESTATUS[0]}" -ne 0 ]; then log "no usable GPU; stopping"; exit 2; fi

# 2. dependencies: what the machine lacks comes from the carried wheels
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"yaml": "pyyaml", "tqdm": "tqdm", "numpy": "numpy", "tensorly": "tensorly", "packaging": "packaging",
        "pandas": "pandas", "matplotlib": "matplotlib", "scipy": "scipy"}
print(" ".join(p for m, p in need.items() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    log "installing from .whl/: $missing"
    "$PY" -m pip install --no-index --find-links .whl/ $missing > "$OUT/logs/pip.log" 2>&1 \
        || "$PY" -m pip install --no-index --find-links .whl/ --break-system-packages $missing >> "$OUT/logs/pip.log" 2>&1 \
        || log "pip could not install all of: $missing (see logs/pip.log)"
fi
core=$("$PY" -c 'import importlib.util as u; print(" ".join(m for m in ("numpy", "yaml", "tqdm", "tensorly", "scipy") if u.find_spec(m) is None))')
if [ -n "$core" ]; then
    log "still missing: $core (carry their wheels for this python in .whl/, see docs/GPU.md); stopping"; exit 2
fi
if [ ! -f .cifar10/cifar-10-batches-py/data_batch_1 ]; then
    log "CIFAR-10 missing: carry it as .cifar10/cifar-10-batches-py/ (see docs/GPU.md)"; exit 2
fi

# 3. measurements (short; each bounded)
step perf_train 150 "$PY" -m bench.perf train --device cuda --networks vgg16,alexnet --steps 30 --warmup 5 \
    --skip-dataloader --compile auto
step perf_adtn 60 "$PY" -m bench.perf adtn --device cuda --qs 20,24 --depths 1,4 --impls fused --repeats 2 --quick
step calibrate 150 "$PY" -m bench.perf calibrate --device cuda --out "$OUT/calibration/cuda.json"
"$PY" - "$OUT" <<'EOF' > "$TABLE" 2>>"$OUT/logs/steps.log"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("# Throughput on this GPU\n")
for line in (out / "gpu.txt").read_text().splitlines():
    if line.startswith(("python", "device 0")):
        print(f"- {line}")
log = (out / "logs" / "perf_train.log")
if log.exists():
    print("\n## bench.perf train (images/s; resident pipeline, bf16, channels_last; compiled = torch.compile)\n")
    print("```\n" + "\n".join(l for l in log.read_text().splitlines() if l.strip()) + "\n```")
cal = out / "calibration" / "cuda.json"
if cal.exists():
    c = json.loads(cal.read_text())
    print(f"\n## Calibration ({c['device_name']}, torch {c['torch']})\n")
    print("| network | batch | train img/s | eval img/s |\n|---|---:|---:|---:|")
    for n, v in c["networks"].items():
        print(f"| {n} | {v['batch']} | {v['train_img_s']:,.0f} | {v['eval_img_s']:,.0f} |")
    print("\n| method | t = a N^b: a | b | t(2^21) s | t(2^24) s |\n|---|---:|---:|---:|---:|")
    for m, f in c["factorize"].items():
        t = lambda n: f["a"] * n ** f["b"]
        print(f"| {m}{' (per pre-fit step)' if f.get('per_step') else ''} | {f['a']:.3g} | {f['b']:.2f} | "
              f"{t(2**21):.3g} | {t(2**24):.3g} |")
EOF
log "wrote $TABLE"

# 4. the suite, under the time budget (records are appended as each job finishes)
CAL="$OUT/calibration/cuda.json"
[ -f "$CAL" ] || CAL=results/calibration/cuda.json
step dry_run 60 "$PY" run_all.py --suite cifar10-headline --dry-run --device cuda --calibration "$CAL" --out "$OUT/results"
step suite $(( MINUTES * 60 + 90 )) "$PY" run_all.py --suite cifar10-headline --device cuda --no-download \
    --data-dir .cifar10 --out "$OUT/results" --calibration "$CAL" --time-budget "$MINUTES" --no-progress
"$PY" - "$OUT" <<'EOF' >> "$TABLE" 2>>"$OUT/logs/steps.log"
import json, pathlib, sys
recs = pathlib.Path(sys.argv[1]) / "results" / "cifar10-headline" / "runs.jsonl"
if recs.exists():
    print("\n## cifar10-headline jobs this window\n")
    print("| method | budget | seed | status | params | acc before | acc after | time s |\n|---|---|---:|---|---:|---:|---:|---:|")
    for line in recs.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        f = lambda k: "" if r.get(k) is None else (f"{r[k]:.2f}" if isinstance(r[k], float) else r[k])
        print(f"| {r['method']} | {r['budget']} | {r['seed']} | {r['status']} | {f('params_compressed_layers')} | "
              f"{f('acc_before_finetune')} | {f('acc_after_finetune')} | {f('time_total_s')} |")
EOF
log "done; records in $OUT/results/cifar10-headline/runs.jsonl, table $TABLE"
