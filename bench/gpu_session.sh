#!/usr/bin/env bash
# The GPU work of issues 3, 5 and 6, in stages that each fit one command on the lent device machine
# (/work/.library/device/README.md: one H100 or H200, at most 10 minutes a command and 30 a session, at most 8
# files of 16 MiB back per command, 64 MiB carried; the machine is given back 30 s after a call).
#
#   make wheels                          # here, once: what the device image lacks (pytorch-metric-learning), .whl/
#   bash bench/gpu_session.sh step8b     # there, carrying .whl and .gpu: the 8B step benchmark (issue 6)
#   bash bench/gpu_session.sh judge      # the small judge: pretrain + eval (issue 3), ~7 min
#   bash bench/gpu_session.sh table      # the full synthetic benchmark (issue 5); repeat until "table complete"
#
# Not timed on a GPU yet. Guesses to check: the judge stage is bound by rendering (~235 images per CPU-second,
# 15 render workers); a SAGA run of table.yaml is ~500 steps of one 96-token generation each, so at some 3-5 ms
# per decoded token in transformers' generate, 2.5-4 minutes, and the 15 SAGA runs need two or three sessions.
#
# Results land in $OUT (the device tool's folder; default out/gpu). What a later stage or session needs travels
# in .gpu/ (git-ignored): copy $OUT's judge-small.tar.* and table-runs.tgz there after each call, and carry it.
# Every stage first restores from .gpu/ what is missing, so a stage can run on a fresh machine. The package runs
# from src/ on the device's python3 (its torch and transformers), nothing is built or downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" runs

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
    # bench/RESULTS.md, "Qwen3-VL-8B geometry on one GPU": dynamic cache, then static cache (compiled decode).
    local common=(--model 8b --pairs 8 --generations 8 --image-size 448 --max-new-tokens 128 --device cuda
                  --dtype bfloat16 --naive --warmup 1 --repeats 2)
    "$PY" bench/step.py "${common[@]}" --out "$OUT/step_8b_gpu.json"
    "$PY" bench/step.py "${common[@]}" --cache static --out "$OUT/step_8b_gpu_static.json"
}

judge() {
    # The small judge (issue 3), saved in bfloat16 (28 MB: it travels), then 1000 + 1000 test pairs.
    "$PY" -m saga.cli judge pretrain --out runs/judge-small --preset small --device cuda --save-dtype bfloat16
    cp runs/judge-small/pretrain.json "$OUT/judge_small_pretrain.json"
    # table.yaml's world (data/synth), rendered unless a complete one is there; the table stage reads it too.
    "$PY" -c "from saga.app.benchmark import ensure_world, load_table; ensure_world(load_table('configs/synth/table.yaml'))"
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
for stage in "$@"; do
    case "$stage" in
        step8b|judge|table) "$stage" ;;
        *) echo "unknown stage $stage (step8b, judge, table)" >&2; exit 2 ;;
    esac
done
