#!/usr/bin/env bash
# The GPU check of issue 14, one prepared script (at most 8 minutes on one H200), writing one JSON:
#   1. update speed of robopretrain's Cal-QL, IQL and image Cal-QL updates at batch 256 and 1024, each in three modes:
#      eager, torch.compile of the loss, CUDA graphs of the loss (torch.compile mode "reduce-overhead"), and the
#      whole update captured as one CUDA graph (robopretrain.algos.cuda_graph; IQL's and BC's replays checked equal to
#      eager updates); CORL's cal_ql.py and
#      iql.py (eager) on the same GPU for the ratio (benchmarks/peers.py --gpu-check); the fp32 matmul peak (TF32 off);
#   2. stage 2's loop (python -m robopretrain.train) eager and with train.cuda_graph=true, IQL and Cal-QL, 2000 updates
#      on 50 Reach demos: wall time, and IQL's weights graphed vs eager (must be equal; benchmarks/gpu_loop.py);
#   3. 100 s of the `paper` preset's stage 2 (python -m robopretrain.pipeline --config-name paper, with tiny data
#      and stage-1 budgets so that stage 2 starts within the budget), reporting how far it got.
#
# Usage:  bash benchmarks/gpu_check.sh [--dry-run] [--out FILE] [--corl DIR] [--wheels DIR] [--python PY]
#   --dry-run   on the CPU, tiny sizes, eager only, and the stage-2 command only composed (Hydra --cfg job), not run:
#               checks that the script starts and that every command line parses (seconds, not minutes)
#   --corl DIR  a CORL checkout (folder with algorithms/); default $CORL_PATH; without it CORL is skipped
#   --wheels DIR  pip-install the wheels in DIR first (--no-index): the device machine has torch but no package
#               registry, and lacks mujoco, hydra, gymnasium, av; the project itself runs from this checkout
#   --prepare-wheels DIR  (on a machine with the registry) put those wheels, at the versions installed here, for the
#               device's Python (--device-python-version, default 3.12) into DIR, then exit
# On a lent H200 (device tool), with .whl, .gl (EGL libraries, device README) and .corl (an exported CORL checkout
# with a COMMIT file) carried:
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export MUJOCO_GL=egl;
#   bash benchmarks/gpu_check.sh --python python3 --wheels .whl --corl .corl --out $OUT/gpu_check.json
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
DRY=0
OUT="$ROOT/benchmarks/results/gpu_check.json"
CORL="${CORL_PATH:-}"
WHEELS=""
PREPARE=""
DEVICE_PY="3.12"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --corl) CORL="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    --python) PY="$2"; shift ;;
    --prepare-wheels) PREPARE="$2"; shift ;;
    --device-python-version) DEVICE_PY="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [ -n "$PREPARE" ]; then
  # The packages the device image lacks (it has torch, torchvision, timm, numpy, h5py, matplotlib, tqdm,
  # tensorboard, ...), at the versions installed here; pure-Python sdists (antlr4) are built into wheels.
  mkdir -p "$PREPARE"
  for name in mujoco hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher gymnasium \
              farama-notifications av glfw pyopengl; do
    spec="$name==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PY" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$PREPARE" "$spec" 2>/dev/null || "$PY" -m pip wheel -q --no-deps -w "$PREPARE" "$spec"
  done
  du -sh "$PREPARE"
  exit 0
fi

if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile "$WHEELS"/*.whl
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)
if [ "$DRY" = 1 ]; then
  DEVICE=cpu; BATCHES="8"; MODES="eager"; ITERS=2; WARMUP=1; BUDGET=120; STAGE2_S=0; PARALLEL=1
else
  DEVICE=cuda; BATCHES="256 1024"; MODES="eager compile cudagraphs graph"; ITERS=300; WARMUP=10; BUDGET=260
  STAGE2_S=100
  PARALLEL=4
fi
CORL_ARGS=()
[ -n "$CORL" ] && CORL_ARGS=(--corl "$CORL")

echo "[gpu_check] update speed on $DEVICE (batches $BATCHES; modes $MODES)"
# shellcheck disable=SC2086
PYTHONPATH="$ROOT" "$PY" "$ROOT/benchmarks/peers.py" --gpu-check --device "$DEVICE" --batches $BATCHES --modes $MODES \
  --algos calql iql image --iters "$ITERS" --warmup "$WARMUP" --threads 1 --budget-s "$BUDGET" --parallel "$PARALLEL" "${CORL_ARGS[@]}" \
  --out "$WORK/updates.json" || echo "[gpu_check] update-speed part failed (see above)"

# Stage 2's loop with and without whole-update CUDA graphs (train.cuda_graph), IQL and Cal-QL on 50 Reach demos;
# IQL's two runs must end with equal weights (benchmarks/gpu_loop.py).
if [ "$DRY" = 1 ]; then LOOP_ARGS=(--device cpu --steps 5 --modes eager --algos iql); else LOOP_ARGS=(--steps 2000); fi
echo "[gpu_check] stage 2 loop, eager and graphed"
PYTHONPATH="$ROOT" "$PY" "$ROOT/benchmarks/gpu_loop.py" "${LOOP_ARGS[@]}" --work "$WORK/loop" --out "$WORK/loop.json" \
  || echo "[gpu_check] loop part failed (see above)"

# Stage 2 of the paper preset: tiny data and stage-1 budgets so that stage 2 starts early; it is stopped after
# STAGE2_S seconds of running, and its metrics.jsonl tells how many updates it made in that time.
RUN="$WORK/paper_run"
STAGE2_ARGS=(--config-name paper "run_dir=$RUN" data.prior_episodes_per_task=2 data.target_demos=2
  data.videos.num_clips=8 stage1.steps=20 stage2.eval_every=1000000 stage2.checkpoint_every=1000000)
if [ "$DRY" = 1 ]; then
  echo "[gpu_check] stage 2 (dry run): composing the command only"
  PYTHONPATH="$ROOT" "$PY" -m robopretrain.pipeline "${STAGE2_ARGS[@]}" --cfg job > "$WORK/stage2_cfg.yaml" \
    && STAGE2_STATUS="composed" || STAGE2_STATUS="failed to compose"
else
  LEFT=$(( 470 - ($(date +%s) - START) ))
  STAGE2_STATUS="not run: no time left"
  if [ "$LEFT" -gt 60 ]; then
    echo "[gpu_check] stage 2 of the paper preset: up to $LEFT s in all, stage 2 itself at most ${STAGE2_S} s"
    PYTHONPATH="$ROOT" timeout "$LEFT" "$PY" -m robopretrain.pipeline "${STAGE2_ARGS[@]}" > "$WORK/stage2.log" 2>&1 &
    PID=$!
    while kill -0 "$PID" 2>/dev/null; do  # stop STAGE2_S seconds after stage 2's folder appears
      if [ -d "$RUN/stage2" ]; then
        S2_START=$(date +%s); sleep "$STAGE2_S"; kill "$PID" 2>/dev/null || true; break
      fi
      sleep 1
    done
    wait "$PID" 2>/dev/null || true
    STAGE2_STATUS="ran"
  fi
fi

"$PY" - "$WORK" "$OUT" "$STAGE2_STATUS" "$STAGE2_S" "${S2_START:-0}" "$START" <<'EOF'
import json, pathlib, sys, time
work, out, status, stage2_s, s2_start, start = sys.argv[1:7]
work = pathlib.Path(work)
report = {"script": "benchmarks/gpu_check.sh", "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
          "wall_s": round(time.time() - float(start), 1)}
for part, name in (("updates", "updates.json"), ("stage2_loop", "loop.json")):
    try:
        report[part] = json.loads((work / name).read_text())
    except (OSError, ValueError) as e:
        report[part] = {"error": str(e)}
stage2 = {"status": status, "seconds_allowed": float(stage2_s)}
metrics = work / "paper_run" / "stage2" / "metrics.jsonl"
if metrics.is_file():
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip().startswith("{")]
    steps = [r.get("step", r.get("updates", r.get("num_updates"))) for r in rows]
    steps = [s for s in steps if isinstance(s, (int, float))]
    stage2["metrics_rows"] = len(rows)
    stage2["last_step"] = max(steps) if steps else None
    if steps and float(s2_start) > 0:
        stage2["updates_per_s_incl_startup"] = round(max(steps) / float(stage2_s), 2)
    stage2["last_row"] = rows[-1] if rows else None
log = work / "stage2.log"
if log.is_file():
    stage2["log_tail"] = log.read_text()[-3000:]
report["paper_stage2"] = stage2
path = pathlib.Path(out)
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(report, indent=2) + "\n")
print(f"[gpu_check] wrote {path}")
EOF
