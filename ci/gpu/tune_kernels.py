"""Development sweep on the GPU: every kernel on every scheme against float32, then tiling variants timed.

    PYTHONPATH=. python3 ci/gpu/tune_kernels.py --out $OUT

Phase 1 (parallel worker processes, which also fill Triton's on-disk cache): each (scheme, config)
runs once on a small shape and is compared with the float32 reference. Phase 2 (this process):
CUDA-graph timing of the variants on the issue's shapes, weights rotated past L2. Phase 3: the
custom op through torch.compile and a captured CUDA graph. Results: <out>/tune.jsonl and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernel_common import (  # noqa: E402
    copies_for,
    dense_copies,
    prepared,
    random_checkpoint,
    reference_out,
    rel_err,
    time_graph,
    weight_bytes,
)

from vllm_autoround.kernels import quantized_linear  # noqa: E402
from vllm_autoround.kernels.launch import KernelConfig, run  # noqa: E402

SHAPES = [(4096, 14336), (14336, 4096), (4096, 6144), (8192, 28672)]
ALL_SCHEMES = [(b, g, s) for b in (2, 3, 4, 8) for g in (32, 64, 128, -1) for s in (True, False)]


def gemv(bn, waves, warps=4, stages=2):
    return KernelConfig("gemv", block_n=bn, waves=waves, num_warps=warps, num_stages=stages)


def gemm(bm, bn, waves, warps=4, stages=3, w_first=False, scale_after=True):
    return KernelConfig("gemm", block_m=bm, block_n=bn, waves=waves, num_warps=warps, num_stages=stages,
                        w_first=w_first, scale_after=scale_after)


DEQ = KernelConfig("dequant", block_n=128)

# Configurations checked on every scheme (those the dispatcher may pick), with the M they run at.
CHECK = [
    (1, gemv(128, 4)), (3, gemv(64, 0)), (16, gemm(16, 64, 4, w_first=True)), (7, gemm(16, 128, 2)),
    (65, gemm(64, 128, 2)), (33, gemm(32, 64, 1)), (300, gemm(128, 256, 0, warps=8, scale_after=False)),
    (300, gemm(128, 128, 0, warps=8)), (300, DEQ),
]

W4 = (4, 128, True)
ALL = SHAPES
TWO = [(4096, 14336), (8192, 28672)]
SWEEP = []  # (scheme, shapes, M list, config)
SWEEP += [(W4, ALL, [1], gemv(bn, w, warps)) for bn in (128, 256) for w in (2, 4, 8) for warps in (4, 8)]
SWEEP += [(W4, ALL, [1], gemv(64, 4)), (W4, TWO, [1], gemv(128, 4, 4, 1)), (W4, TWO, [1], gemv(128, 4, 4, 3))]
SWEEP += [(W4, ALL, [1, 16], gemm(16, bn, w, w_first=True)) for bn in (64, 128) for w in (2, 4)]
for scheme in [(2, 64, True), (3, 64, True), (8, 128, True), (4, 128, False), (3, 64, False)]:
    SWEEP += [(scheme, ALL, [1], gemv(bn, w)) for bn in (128, 256) for w in (4, 8)]
    SWEEP.append((scheme, TWO, [1, 16], gemm(16, 64, 4, w_first=True)))
for scheme in [(8, 128, True), (4, 128, False)]:
    SWEEP += [(scheme, TWO, [16], gemm(16, 64, w, w_first=wf)) for w in (2, 4) for wf in (False, True)]
    SWEEP += [(scheme, TWO, [64], gemm(bm, 128, 1)) for bm in (32, 64)]
    SWEEP += [(scheme, TWO, [256, 1024], gemm(128, 256, 0, warps=8, scale_after=sa)) for sa in (True, False)]
SWEEP += [(W4, TWO, [16], gemm(16, bn, w, w_first=wf)) for bn in (32, 64, 128) for w in (1, 2) for wf in (False, True)]
SWEEP += [(W4, TWO, [16], gemv(128, 4))]
SWEEP += [(W4, TWO, [64], gemm(bm, bn, w, w_first=wf)) for bm in (16, 32, 64) for bn in (64, 128) for w in (1, 2)
          for wf in (False, True) if not (wf and bm == 64)]
SWEEP += [(W4, TWO, [256, 1024], gemm(bm, bn, 0, warps=warps, scale_after=sa)) for bm in (64, 128)
          for bn in (128, 256) for warps in (4, 8) for sa in (True, False) if not (bm == 64 and bn == 256)]
SWEEP += [(W4, TWO, [256, 1024], gemm(128, 256, 0, warps=8, stages=st, scale_after=False)) for st in (2, 4)]
SWEEP += [(W4, TWO, [4096], gemm(128, bn, 0, warps=8, scale_after=False)) for bn in (128, 256)]
SWEEP += [(s, ALL if s == W4 else TWO, [256, 1024, 4096], DEQ) for s in [W4, (8, 128, True), (4, 128, False)]]


# ---------------------------------------------------------------- phase 1: workers
_W: dict = {}


def _small_weight(scheme, k, n):
    key = (scheme, k, n)
    if key not in _W:
        bits, gs, sym = scheme
        ck = random_checkpoint(bits, gs, sym, k, n, seed=hash(key) % 1000)
        bias = torch.randn(n, device="cuda", dtype=torch.float16)
        p = prepared(ck, bias=bias)
        _W[key] = (ck, p, bias)
    return _W[key]


def check_task(scheme, m, cfg, dtype_name="bfloat16"):
    """Run one config on a small shape with tails; return its relative error vs float32."""
    bits, gs, sym = scheme
    k = 1056 if gs == -1 else 1152
    n = 352
    try:
        ck, p, bias = _small_weight(scheme, k, n)
        dtype = getattr(torch, dtype_name)
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)
        t0 = time.time()
        run(x, p, cfg, out=out)
        torch.cuda.synchronize()
        err = rel_err(out, reference_out(x, ck, bias))
        counters_clean = int(p.counters.abs().sum()) == 0
        return dict(phase="check", scheme=scheme, m=m, cfg=cfg.to_dict(), err=err, dtype=dtype_name,
                    counters_clean=counters_clean, seconds=time.time() - t0)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        return dict(phase="check", scheme=scheme, m=m, cfg=cfg.to_dict(), err=None, error=repr(exc)[:300],
                    tb=traceback.format_exc()[-800:])


def _check_batch(items):
    return [check_task(*it) for it in items]


# ---------------------------------------------------------------- phase 2: timing
def time_variants(log, deadline):
    """Time SWEEP in priority order (M=1/16 first, large M last), stopping at ``deadline``."""
    results = []
    stages = [(1, 16), (64,), (256, 1024, 4096)]
    for stage in stages:
        for (k, n) in SHAPES:
            if time.time() > deadline:
                print("deadline: timing stopped", flush=True)
                return results
            x_all = torch.randn(max(stage), k, device="cuda", dtype=torch.bfloat16)
            w16 = dense_copies(n, k)
            for m in stage:
                us = time_graph([lambda w=w, x=x_all[:m]: torch.nn.functional.linear(x, w) for w in w16])
                rec = dict(phase="time", kind="bf16", k=k, n=n, m=m, us=us)
                log(rec)
                results.append(rec)
            del w16
            by_scheme: dict = {}
            for scheme, shapes, ms, cfg in SWEEP:
                todo = [m for m in ms if m in stage]
                if (k, n) in shapes and todo:
                    by_scheme.setdefault(scheme, []).append((todo, cfg))
            for scheme, items in by_scheme.items():
                bits, gs, sym = scheme
                nbytes = weight_bytes(bits, gs, k, n, sym)
                ck = random_checkpoint(bits, gs, sym, k, n)
                preps = [prepared(ck) for _ in range(copies_for(nbytes))]
                for ms, cfg in items:
                    for m in ms:
                        x = x_all[:m]
                        try:
                            us = time_graph([lambda p=p, x=x, cfg=cfg: run(x, p, cfg) for p in preps])
                            rec = dict(phase="time", kind=cfg.kind, scheme=scheme, k=k, n=n, m=m, cfg=cfg.to_dict(),
                                       us=us, gbps=nbytes / us / 1e3)
                        except Exception as exc:  # noqa: BLE001
                            rec = dict(phase="time", kind=cfg.kind, scheme=scheme, k=k, n=n, m=m,
                                       cfg=cfg.to_dict(), us=None, error=repr(exc)[:300])
                        log(rec)
                        results.append(rec)
                del preps, ck
                torch.cuda.empty_cache()
        print(f"stage {stage} done", flush=True)
    return results


def copy_bandwidth():
    a = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = time_graph([lambda: b.copy_(a)], reps=10, min_calls=4)
    return 2 * a.numel() / us / 1e3  # GB/s, read + write


# ---------------------------------------------------------------- phase 3: torch.compile + graphs
def compile_check():
    ck = random_checkpoint(4, 128, False, 1024, 512)
    bias = torch.randn(512, device="cuda", dtype=torch.bfloat16)
    p = prepared(ck, bias=bias)
    f = torch.compile(lambda x: quantized_linear(x, p) * 2.0, fullgraph=True, dynamic=True)
    out = {}
    for m in (1, 5, 64, 300):
        x = torch.randn(2, m, 1024, device="cuda", dtype=torch.bfloat16)
        out[f"compile_m{m}"] = rel_err(f(x), 2.0 * reference_out(x, ck, bias))
    x = torch.randn(8, 1024, device="cuda", dtype=torch.bfloat16)
    f(x)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = f(x)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    out["graph_replay"] = rel_err(y, 2.0 * reference_out(x, ck, bias))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--check-seconds", type=float, default=150)
    ap.add_argument("--total-seconds", type=float, default=480)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "tune.jsonl"), "w")

    def log(rec):
        logf.write(json.dumps(rec) + "\n")
        logf.flush()

    t0 = time.time()
    print(torch.cuda.get_device_name(), "sms", torch.cuda.get_device_properties(0).multi_processor_count, flush=True)
    bad = []
    if not args.skip_check:
        tasks = [(s, m, c) for s in ALL_SCHEMES for (m, c) in CHECK]
        tasks += [((4, 128, True), 5, gemv(128, 4), "float16"), ((4, 128, False), 17, gemm(16, 64, 4, w_first=True),
                  "float16"), ((3, 32, False), 300, DEQ, "float16")]
        seen = set()
        for scheme, _, ms, cfg in SWEEP:
            key = (scheme, cfg)
            if key not in seen:
                seen.add(key)
                tasks.append((scheme, ms[0], cfg))
        # round-robin batches keep each worker's weights cache small and its compiles varied
        batches = [tasks[i::args.workers * 3] for i in range(args.workers * 3)]
        ctx = get_context("spawn")
        ex = ProcessPoolExecutor(args.workers, mp_context=ctx)
        futs = [ex.submit(_check_batch, b) for b in batches if b]
        try:
            for f in as_completed(futs, timeout=args.check_seconds):
                for rec in f.result():
                    log(rec)
                    ok = rec.get("err") is not None and rec["err"] < 2e-2 and rec.get("counters_clean", True)
                    if not ok:
                        bad.append(rec)
        except TimeoutError:
            print("phase 1 timed out; unfinished checks dropped", flush=True)
        ex.shutdown(wait=False, cancel_futures=True)
        print(f"phase 1: {len(tasks)} checks, {len(bad)} bad, {time.time() - t0:.0f}s", flush=True)
        for rec in bad[:40]:
            print("BAD", json.dumps({k: rec.get(k) for k in ("scheme", "m", "cfg", "err", "error")}), flush=True)
        if bad and bad[0].get("tb"):
            print(bad[0]["tb"], flush=True)
    bw = copy_bandwidth()
    log(dict(phase="copy", gbps=bw))
    print(f"D2D copy {bw:.0f} GB/s", flush=True)
    try:
        cc = compile_check()
        log(dict(phase="compile", **cc))
        print("compile/graph:", cc, flush=True)
    except Exception as exc:  # noqa: BLE001
        print("compile check failed:", repr(exc)[:500], traceback.format_exc()[-1500:], flush=True)
    res = time_variants(log, t0 + args.total_seconds)
    print(f"phase 2 done {time.time() - t0:.0f}s", flush=True)
    summarize(res)


def summarize(res):
    bf16 = {(r["k"], r["n"], r["m"]): r["us"] for r in res if r["kind"] == "bf16"}
    best: dict = {}
    for r in res:
        if r["kind"] == "bf16" or r.get("us") is None:
            continue
        key = (tuple(r["scheme"]), r["k"], r["n"], r["m"])
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    print(f"{'scheme':>12} {'K':>6} {'N':>6} {'M':>5} {'us':>8} {'GB/s':>6} {'xbf16':>6}  config")
    for key in sorted(best):
        r = best[key]
        c = r["cfg"]
        desc = (f"{c['kind']} bm{c['block_m']} bn{c['block_n']} wv{c['waves']} w{c['num_warps']} s{c['num_stages']}"
                f"{' sa' if c['scale_after'] else ''}{' wf' if c['w_first'] else ''}")
        b = bf16.get(key[1:])
        print(f"{str(key[0]):>12} {key[1]:>6} {key[2]:>6} {key[3]:>5} {r['us']:8.1f} {r['gbps']:6.0f} "
              f"{(b / r['us'] if b else 0):6.2f}  {desc}")
    for key, us in sorted(bf16.items()):
        print(f"bf16 K={key[0]} N={key[1]} M={key[2]}: {us:.1f} us")


if __name__ == "__main__":
    main()
