#!/usr/bin/env bash
# The GPU checks in one command, on one H100 / H200, within 8 minutes (the lent device machine runs a command for
# at most 10 minutes and brings back at most 8 files of 16 MiB; what it needs beyond the tracked tree is carried).
#
#   make wheels                                  # here, once: what the device image lacks, as wheels in .whl/
#   bash bench/gpu_check.sh                      # there, carrying .whl; results in $OUT (default out/gpu)
#   SAGA_COMMIT=<sha> OUT=... bash bench/gpu_check.sh   # the commit to record (the device's copy has no .git)
#
# The default stages, in this order, each under a time limit so the whole command ends within BUDGET seconds:
#   step8b   bench/step.py at the Qwen3-VL-8B geometry (random weights; P 8, G 8, 448 px, 128 tokens, bf16 judge,
#            fp32 tower) in one process: the shared path warmed up (compiled static-cache decoding), the
#            per-completion path (dynamic cache: what saga train ran before) and the naive path once, then the
#            agreement checks -> step8b.json (rewritten after each of those stages: `completed`), step8b.log
#   tiny     saga train, the SAGA preset with the shipped tiny judge (configs/synth/saga.yaml), 30 steps on CUDA on
#            a small rendered world -> tiny_metrics.jsonl, tiny.log
#   agff     hook: bench/agff_cost.py if that file exists (another branch), and nothing else -> agff.log
#   extra    hook: empty, for another branch
#   summary  the figures against issue 16's targets -> summary.json (also printed)
# At most 7 files in $OUT. Other stages by name (each fits one 10-minute command; they need .gpu/ carried as well):
#   judge    the small judge: pretrain + eval (~7 min)
#   table    the synthetic benchmark (configs/synth/table.yaml); repeat until it prints "table complete"
# What a later judge/table call needs travels in .gpu/ (git-ignored): copy $OUT's judge-small.tar.* and
# table-runs.tgz there after each call, and carry it. The package runs from src/ on the device's python3 (its
# torch and transformers); nothing is built or downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
PY=${PY:-python3}
BUDGET=${BUDGET:-470}              # seconds for the default stages together (the target: 8 minutes)
STEP8B_SECONDS=${STEP8B_SECONDS:-330}
TINY_SECONDS=${TINY_SECONDS:-100}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" runs

left() {  # seconds left of BUDGET, at most $1
    local rest=$((BUDGET - SECONDS))
    (( rest < $1 )) && echo $((rest > 1 ? rest : 1)) || echo "$1"
}

setup() {
    if ! "$PY" -c "import pytorch_metric_learning" 2>/dev/null; then
        ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run 'make wheels' here, carry .whl" >&2; exit 2; }
        "$PY" -m pip install -q --no-index --no-deps .whl/*.whl
    fi
    if [ ! -d runs/judge-small ] && ls .gpu/judge-small.tar.* >/dev/null 2>&1; then
        cat .gpu/judge-small.tar.* | tar -x -C runs && echo "restored runs/judge-small from .gpu/"
    fi
    if [ ! -d runs/table ] && [ -f .gpu/table-runs.tgz ]; then
        tar -xzf .gpu/table-runs.tgz && echo "restored the finished runs of runs/table from .gpu/"
    fi
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
              torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
}

step8b() {
    timeout --signal=INT --kill-after=20 "$(left "$STEP8B_SECONDS")" "$PY" bench/step.py --model 8b --pairs 8 \
        --generations 8 --image-size 448 --max-new-tokens 128 --device cuda --dtype bfloat16 --cache auto \
        --warmup 1 --repeats 2 --fast --fast-cache dynamic --naive --naive-repeats 1 --out "$OUT/step8b.json" \
        > "$OUT/step8b.log" 2>&1 \
        || echo "step8b failed or ran out of time (rc $?): see step8b.log"
    tail -n 3 "$OUT/step8b.log"
}

tiny() {
    # A small world (24 train / 24 test classes); the preset's batch (8 classes x 4) and pairs (4 x 8 completions).
    local world=data/synth-check run=runs/gpu-check-tiny rc=0
    : > "$OUT/tiny.log"
    "$PY" -c "import sys; from saga.synth.generate import world_complete; sys.exit(not world_complete('$world'))" \
        || "$PY" -m saga.cli synth --out "$world" --classes 48 --images-per-class 12 --size 128 >> "$OUT/tiny.log" 2>&1
    rm -rf "$run"
    timeout --signal=INT --kill-after=20 "$(left "$TINY_SECONDS")" "$PY" -m saga.cli train \
        --config configs/synth/saga.yaml "device=${TINY_DEVICE:-cuda}" "data.root=$world" "out_dir=$run" \
        "optim.steps=${TINY_STEPS:-30}" log_every=1 eval_every=0 checkpoint_every=0 grpo.log_completions_every=0 \
        >> "$OUT/tiny.log" 2>&1 || rc=$?
    cp "$run/metrics.jsonl" "$OUT/tiny_metrics.jsonl" 2>/dev/null || true
    [ "$rc" -eq 0 ] || echo "tiny failed or ran out of time (rc $rc): see tiny.log"
}

agff() {
    # Hook for the AGFF inference-cost benchmark (another branch): run it if it exists, nothing else.
    [ -f bench/agff_cost.py ] || { echo "bench/agff_cost.py absent: skipped"; return 0; }
    timeout --signal=INT --kill-after=20 "$(left 600)" "$PY" bench/agff_cost.py > "$OUT/agff.log" 2>&1 \
        || echo "agff_cost failed or ran out of time (rc $?): see agff.log"
}

extra() {
    :  # hook for another branch
}

summary() {
    "$PY" - "$OUT" <<'EOF'
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
TINY_TARGET_S = 0.2  # issue 16: the tiny judge's SAGA step on the GPU
summary = {"step8b": None, "tiny": None}
step = out / "step8b.json"
if step.is_file():
    r = json.loads(step.read_text())
    s = r["shared"]
    summary["step8b"] = {
        "completed": r["completed"], "gpu": r["hardware"]["name"], "git_commit": r["environment"]["git_commit"],
        "versions": {k: r["environment"]["versions"][k] for k in ("torch", "transformers")},
        "step_s": s["step_s"], "pairs_per_s": s["pairs_per_s"], "phases_s": s["phases_s"],
        "decode_step_s": s["decode"]["step_s"], "decode_ratio_to_bound": s["decode"]["ratio_to_bound"],
        "peak_memory_gib": s["peak_memory_gib"], "fast_step_s": (r["fast"] or {}).get("step_s"),
        "naive_step_s": (r["naive"] or {}).get("step_s"), "speedup_vs_fast": r["speedup_vs_fast"],
        "speedup_vs_naive": r["speedup_vs_naive"], "agreement": r["agreement"], "estimate": r["estimate"],
        "targets": r["targets"], "met": r["met"], "wall_s": r["wall_s"]}
metrics = out / "tiny_metrics.jsonl"
if metrics.is_file():
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [row["step_seconds"] for row in rows if "step_seconds" in row and row["step"] > 10]  # compiled by then
    if steps:
        median = statistics.median(steps)
        summary["tiny"] = {"steps": len(steps), "median_step_s": median, "max_step_s": max(steps),
                           "first_step_s": next(row["step_seconds"] for row in rows if "step_seconds" in row),
                           "target_s": TINY_TARGET_S, "met": median <= TINY_TARGET_S}
text = json.dumps(summary, indent=2)
(out / "summary.json").write_text(text + "\n")
print(text)
EOF
}

judge() {
    # The small judge (issue 3), saved in bfloat16 (28 MB: it travels), then 1000 + 1000 test pairs.
    "$PY" -m saga.cli judge pretrain --out runs/judge-small --preset small --device cuda --save-dtype bfloat16
    cp runs/judge-small/pretrain.json "$OUT/judge_small_pretrain.json"
    # table.yaml's world (data/synth), rendered unless a complete one is there; the table stage reads it too.
    "$PY" -c "from saga.app.benchmark import ensure_world, load_table; \
        ensure_world(load_table('configs/synth/table.yaml'))"
    "$PY" -m saga.cli judge eval --judge runs/judge-small --dataset synth --root data/synth --split test \
        --pairs 1000 --device cuda --json "$OUT/judge_small_eval.json"
    tar -c -C runs judge-small | split -b 15M - "$OUT/judge-small.tar."
}

table() {
    # Resumable (saga.app.benchmark): a finished row-seed run is reused, an interrupted one resumes from its last
    # checkpoint; results.json is rewritten after every run. Stops itself before the command's 10 minutes.
    local rc=0
    timeout --signal=INT "${TABLE_SECONDS:-540}" "$PY" -m saga.cli benchmark --config configs/synth/table.yaml \
        --seeds 0 1 2 --out runs/table || rc=$?
    cp runs/table/results.json runs/table/results.md "$OUT/" 2>/dev/null || true
    # What a later session needs to reuse the finished runs (each run's config and test metrics) and to read them
    # (training curves, the judge's completions for bench/judge_readings.py); no weights.
    find runs/table -mindepth 3 -maxdepth 3 \( -name config.yaml -o -name test_metrics.json -o -name metrics.jsonl \
        -o -name completions.jsonl \) \
        | tar -czf "$OUT/table-runs.tgz" -T -
    if [ "$rc" -eq 0 ]; then echo "table complete"; else echo "table incomplete (rc $rc): run this stage again"; fi
}

setup
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(step8b tiny agff extra summary)
for stage in "${stages[@]}"; do
    case "$stage" in
        step8b|tiny|agff|extra|summary|judge|table) echo "== $stage ($SECONDS s)"; "$stage" ;;
        *) echo "unknown stage $stage (step8b, tiny, agff, extra, summary; judge, table)" >&2; exit 2 ;;
    esac
done
echo "== done ($SECONDS s)"
