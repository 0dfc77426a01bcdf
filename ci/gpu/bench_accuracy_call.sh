# One call of the accuracy benchmark on a warm GPU machine that already has /tmp/site (wheels) and
# /tmp/acc/smollm2 (ci/smollm2.py): fills $RESULTS (kept in /tmp across calls) and copies it to $OUT.
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RESULTS=${RESULTS:-/tmp/acc/accuracy.json}
python3 ci/bench_accuracy.py --model /tmp/acc/smollm2 --results "$RESULTS" --deadline "${DEADLINE:-420}" \
  --schemes "${SCHEMES:-W4g128,W2g64,W3g64}" --e2e_flags "${E2E_FLAGS:-}" 2>/tmp/err_bench.txt \
  || tail -5 /tmp/err_bench.txt | tr '\r' '\n' | tail -5
cp "$RESULTS" "$OUT/"
