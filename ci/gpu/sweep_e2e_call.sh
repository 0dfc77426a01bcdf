# One call of the end-to-end stage sweep on a warm GPU machine that already has /tmp/site (wheels) and
# /tmp/acc/smollm2 (ci/smollm2.py): runs the $VARIANTS (JSON list, keys in sweep_e2e.DEFAULTS) not yet in
# $RESULTS (kept in /tmp across calls, with the SignRound start under /tmp/sweep) and copies it to $OUT.
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RESULTS=${RESULTS:-/tmp/acc/sweep.json}
python3 ci/gpu/sweep_e2e.py --model /tmp/acc/smollm2 --results "$RESULTS" --work /tmp/sweep \
  --deadline "${DEADLINE:-440}" --variants "$VARIANTS" 2>/tmp/err_sweep.txt \
  || tail -5 /tmp/err_sweep.txt | tr '\r' '\n' | tail -5
cp "$RESULTS" "$OUT/"
cp /tmp/sweep/signround/quantize_report.json "$OUT/sweep_signround_report.json" 2>/dev/null
true
