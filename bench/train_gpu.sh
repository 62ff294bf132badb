#!/usr/bin/env bash
# The trainer on one GPU at full size, in under 8 minutes: ResNet-50 + a BERT-base-sized text tower
# (random init: hidden 768, 12 layers, 12 heads) + GCN, preset=full, bf16, batch 256, on synthetic
# full-size shards (bench/train_synthetic.py: 256-px PNGs, 1-2 negated reports, 10-20-node graphs).
#
#   bash bench/train_gpu.sh              # on the GPU box (its python3, no venv, no internet)
#   SMOKE=1 bash bench/train_gpu.sh      # the same phases on CPU with a tiny model (checks the script)
#
# Phases, each under `timeout` within an overall budget (BUDGET seconds, 450 by default):
#   1. generate SAMPLES samples of shards with GEN_WORKERS processes (timed);
#   2. train STEPS steps in bf16; figures over the steps after WARMUP: samples/s (median), the
#      loader's share of step time (data_wait), peak GPU memory (torch max_memory_allocated);
#   3. the same run in fp32 (same seed and max_steps, so the same weights, batches and learning
#      rates; stop_after=CMP_STEPS), and the bf16 loss against the fp32 loss step by step.
# Text dropout is 0 in both runs (DROPOUT) so that the two see the same network; the runs differ
# only in precision (deterministic=false, TF32 allowed in fp32 as the trainer does).
# Then a FIGURES block of key=value lines. Exit status: 0 when every phase finished; non-zero when
# the trainer or the generator failed (its log tail is printed), or when the bf16 run measured no
# step after warm-up. A phase cut by the budget is reported (budget_hit=...) and the figures of the
# steps it did are kept; it fails only when too little was measured.
# Knobs (environment): PYTHON SAMPLES STEPS WARMUP CMP_STEPS BATCH WORKERS GEN_WORKERS DEVICE
# PRECISION BUDGET DROPOUT KEEP=1 (keep the work folder) WORK (its parent) EXTRA (more overrides).
set -euo pipefail
cd "$(dirname "$0")/.."

T0=$(date +%s)
PYTHON=${PYTHON:-python3}
if [[ "${SMOKE:-0}" == 1 ]]; then
  SAMPLES=${SAMPLES:-800} SHARD_SIZE=${SHARD_SIZE:-200} STEPS=${STEPS:-6} WARMUP=${WARMUP:-2}
  CMP_STEPS=${CMP_STEPS:-3} BATCH=${BATCH:-16} WORKERS=${WORKERS:-2} DEVICE=${DEVICE:-cpu}
  BUDGET=${BUDGET:-600}
  MODEL=(model.image.arch=resnet18 model.image.width=8 model.text.path=tiny model.text.tiny_hidden=32
         model.text.tiny_layers=2 model.text.tiny_heads=2 model.embed_dim=64 model.graph.hidden=32
         data.resolution=64)
else
  # 36 parts of 1000 samples over 12 workers: 3 parts each, so no worker runs dry before the
  # others (a ragged split halves the loader's throughput at the end of an epoch), and 132 steps
  # of 256 per epoch: STEPS stays inside the first epoch (no epoch-end checkpoint mid-run).
  SAMPLES=${SAMPLES:-36000} SHARD_SIZE=${SHARD_SIZE:-1000} STEPS=${STEPS:-120} WARMUP=${WARMUP:-20}
  CMP_STEPS=${CMP_STEPS:-10} BATCH=${BATCH:-256} WORKERS=${WORKERS:-12} DEVICE=${DEVICE:-cuda}
  BUDGET=${BUDGET:-450}
  MODEL=(model.image.arch=resnet50 model.image.width=64 model.text.path=tiny model.text.tiny_hidden=768
         model.text.tiny_layers=12 model.text.tiny_heads=12 data.resolution=224)
fi
GEN_WORKERS=${GEN_WORKERS:-$(nproc)}
PRECISION=${PRECISION:-bf16}
DROPOUT=${DROPOUT:-0.0}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
# Seconds kept back at the end for the report; phase caps (each also bounded by what is left).
RESERVE=15 GEN_CAP=${GEN_CAP:-90} MAIN_CAP=${MAIN_CAP:-270} CMP_CAP=${CMP_CAP:-150}

WORK=$(mktemp -d "${WORK:-${TMPDIR:-/tmp}}/bench-train-gpu-XXXXXX")
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; else echo "work folder: $WORK (kept)"; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false CLIP2CLINIC_LOG_LEVEL=${CLIP2CLINIC_LOG_LEVEL:-INFO}

left() { echo $(( T0 + BUDGET - RESERVE - $(date +%s) )); }
cap() { local l; l=$(left); (( l < $1 )) && echo "$l" || echo "$1"; }
die() { echo "FAILED: $*" >&2; exit 1; }

echo "== environment"
"$PYTHON" - "$DEVICE" <<'EOF' || die "the environment check failed (see above)"
import sys, platform
import torch, numpy, pyarrow, PIL, transformers, tokenizers
device = sys.argv[1]
print(f"python {platform.python_version()} torch {torch.__version__} (cuda {torch.version.cuda}) numpy {numpy.__version__} "
      f"pyarrow {pyarrow.__version__} Pillow {PIL.__version__} transformers {transformers.__version__} tokenizers {tokenizers.__version__}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("DEVICE=cuda but torch sees no GPU")
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
import os, shutil
shm = shutil.disk_usage("/dev/shm").total / 2**30 if os.path.isdir("/dev/shm") else 0.0
print(f"/dev/shm {shm:.1f} GiB" + ("  WARNING: the loader workers pass batches through it (~0.6 MB a sample)" if shm < 8 else ""))
# The trainer must run on a bare CUDA box: none of the CPU pipeline's heavy dependencies.
import pipeline.train.loop  # noqa: F401
banned = ("dask", "distributed", "spacy", "hydra", "omegaconf", "polars", "pipeline.core")
hit = sorted(m for m in sys.modules if m.split(".")[0] in banned or m.startswith("pipeline.core"))
if hit:
    sys.exit(f"pipeline.train imports {hit[:8]}: the GPU box has none of them")
print("pipeline.train imports: torch, numpy, pyarrow, Pillow, transformers only (no dask/spacy/hydra/polars/pipeline.core)")
EOF

echo "== 1. synthetic shards: $SAMPLES samples, $GEN_WORKERS processes"
t=$(date +%s)
timeout -k 10 "$(cap "$GEN_CAP")" "$PYTHON" bench/train_synthetic.py out="$WORK/shards" samples="$SAMPLES" \
  workers="$GEN_WORKERS" shard_size="$SHARD_SIZE" | tee "$WORK/gen.txt" || die "shard generation failed or ran past its budget"
GEN_S=$(( $(date +%s) - t ))

COMMON=(data.shards="$WORK/shards" preset=full data.batch_size="$BATCH" data.workers="$WORKERS" device="$DEVICE"
        max_steps="$STEPS" seed=0 deterministic=false progress=false checkpoint_every=1000000 log_every=1
        model.text.dropout="$DROPOUT" "${MODEL[@]}" "${EXTRA_ARGS[@]}")

# run NAME CAP ARGS...: the trainer under timeout; sets RC and BUDGET_HIT_<NAME>; dies on a real failure.
run() {
  local name=$1 limit; limit=$(cap "$2"); shift 2
  (( limit >= 20 )) || { echo "no time left for $name ($limit s)"; RC=124; printf -v "BUDGET_HIT_$name" 1; return; }
  echo "python -m pipeline.train $* (timeout ${limit} s)"
  local t; t=$(date +%s)
  set +e
  timeout -k 15 "$limit" "$PYTHON" -m pipeline.train "$@" > "$WORK/$name.log" 2>&1
  RC=$?
  set -e
  printf -v "WALL_$name" %s $(( $(date +%s) - t ))
  tail -n 3 "$WORK/$name.log"
  if (( RC == 124 || RC == 137 )); then
    echo "WARNING: $name ran past its ${limit} s budget; keeping the steps it logged"
    printf -v "BUDGET_HIT_$name" 1
  elif (( RC != 0 )); then
    echo "---- $name log (tail)"; tail -n 60 "$WORK/$name.log"
    die "the trainer failed in the $name run (exit $RC)"
  else
    printf -v "BUDGET_HIT_$name" 0
  fi
}

echo "== 2. train $STEPS steps, preset=full, precision=$PRECISION, batch $BATCH, $WORKERS loader workers"
run main "$MAIN_CAP" "${COMMON[@]}" out="$WORK/main" precision="$PRECISION"

echo "== 3. the first $CMP_STEPS steps again in fp32"
run fp32 "$CMP_CAP" "${COMMON[@]}" out="$WORK/fp32" precision=fp32 stop_after="$CMP_STEPS"

echo "== report"
"$PYTHON" - "$WORK" "$WARMUP" "$CMP_STEPS" <<EOF
import json, statistics, sys
from pathlib import Path
work, warmup, cmp_steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def lines(name):
    p = work / name / "metrics.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []
main, fp32 = lines("main"), lines("fp32")
gen = dict(l.split("=", 1) for l in (work / "gen.txt").read_text().split() if "=" in l)
kept = main[warmup:]
fig = {
    "device": "$DEVICE", "precision": "$PRECISION", "batch_size": $BATCH, "loader_workers": $WORKERS,
    "model": "${MODEL[*]}", "text_dropout": $DROPOUT,
    "synthetic_samples": gen.get("synthetic_samples"), "synthetic_generation_s": gen.get("synthetic_generation_s"),
    "generation_wall_s": $GEN_S, "main_wall_s": ${WALL_main:-0}, "fp32_wall_s": ${WALL_fp32:-0},
    "budget_hit_main": ${BUDGET_HIT_main:-0}, "budget_hit_fp32": ${BUDGET_HIT_fp32:-0},
    "steps_logged": len(main), "steps_measured": len(kept), "warmup_steps": warmup,
}
if kept:
    sps = [m["samples_per_s"] for m in kept]
    wait = [m["data_wait"] for m in kept]
    fig.update(
        samples_per_s_median=round(statistics.median(sps), 1),
        samples_per_s_p10_p90=f"{statistics.quantiles(sps, n=10)[0]:.1f},{statistics.quantiles(sps, n=10)[-1]:.1f}" if len(sps) > 1 else "",
        step_ms_median=round(1e3 * statistics.median(m["batch_size"] / m["samples_per_s"] for m in kept), 1),
        data_wait_median=round(statistics.median(wait), 4),
        data_wait_mean=round(statistics.fmean(wait), 4),
        data_wait_max=round(max(wait), 4),
        negatives_per_step_mean=round(statistics.fmean(m["negatives"] for m in kept), 1),
    )
mem = [m["gpu_memory_mb"] for m in main + fp32 if m.get("gpu_memory_mb") is not None]
fig["peak_gpu_memory_mb_bf16"] = round(max((m["gpu_memory_mb"] or 0) for m in main), 0) if main and mem else None
fig["peak_gpu_memory_mb_fp32"] = round(max((m["gpu_memory_mb"] or 0) for m in fp32), 0) if fp32 and mem else None
if fp32:
    fp_kept = fp32[min(3, len(fp32) - 1):]
    fig["fp32_samples_per_s_median"] = round(statistics.median(m["samples_per_s"] for m in fp_kept), 1)
print(f"step  loss_{fig['precision']:<5}  loss_fp32   abs_diff   (loss_i2t, loss_t2i, loss_graph_image diffs)")
diffs = []
for a, b in zip(main[:cmp_steps], fp32[:cmp_steps]):
    d = abs(a["loss"] - b["loss"])
    diffs.append(d)
    parts = ", ".join(f"{abs(a[k] - b[k]):.2e}" for k in ("loss_i2t", "loss_t2i", "loss_graph_image") if a.get(k) is not None and b.get(k) is not None)
    print(f"{a['step']:>4}  {a['loss']:.6f}   {b['loss']:.6f}   {d:.2e}   ({parts})")
fig["loss_steps_compared"] = len(diffs)
fig["loss_max_abs_diff"] = f"{max(diffs):.3e}" if diffs else None
fig["loss_step1_abs_diff"] = f"{diffs[0]:.3e}" if diffs else None
print("== FIGURES")
for k, v in fig.items():
    print(f"{k}={v}")
fails = []
if not kept:
    fails.append(f"the {fig['precision']} run logged {len(main)} steps: none after the {warmup} warm-up steps")
if len(diffs) < min(cmp_steps, 1):
    fails.append("no step to compare between the two precisions")
if fails:
    sys.exit("FAILED: " + "; ".join(fails))
EOF
echo "total_wall_s=$(( $(date +%s) - T0 )) (budget $BUDGET s)"
