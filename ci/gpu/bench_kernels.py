"""Kernel benchmark: ours vs vLLM's Marlin and Machete vs bf16 F.linear, one run, same weights.

On the H100 with vLLM from ../shared/gpu-kit (see docs/benchmarks.md for the three calls):

    source .gpukit/p2/install.sh && PYTHONPATH=.:$PYTHONPATH python3 ci/gpu/bench_kernels.py --out $OUT

For every (K, N) and M: ours through ``quantized_linear`` (the custom op, autotuned as in serving),
Marlin (``apply_gptq_marlin_linear``: W4/W8 sym, W4 asym), Machete (``machete_mm``) and bf16 F.linear,
each timed by CUDA-graph replay over weight copies rotated so that every call streams its weight
from DRAM. Our outputs (and Marlin's, Machete's) are checked against a float32 reference on the GPU.
Writes <out>/bench.json and <out>/bench.md; prints the table.
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
    reference_weight,
    rel_err,
    time_graph,
    weight_bytes,
)

from vllm_autoround.format.packing import unpack_cols  # noqa: E402
from vllm_autoround.kernels import quantized_linear  # noqa: E402
from vllm_autoround.kernels.launch import run  # noqa: E402
from vllm_autoround.kernels.tuning import TUNER, candidates, m_bucket  # noqa: E402

SHAPES = [(4096, 14336), (14336, 4096), (4096, 6144), (8192, 28672)]
MS = [1, 16, 64, 256, 1024, 4096]
# (name, bits, group_size, sym, M values, compare with vLLM)
SCHEMES = [
    ("W4 g128 sym", 4, 128, True, MS, True),
    ("W2 g64 sym", 2, 64, True, [1, 16, 64, 256], False),
    ("W3 g64 sym", 3, 64, True, [1, 16, 64, 256], False),
    ("W4 g128 asym", 4, 128, False, MS, True),
    ("W8 g128 sym", 8, 128, True, MS, True),
]
ERR_BOUND = 2e-2  # bf16 output, float32 reference
DEV = "cuda"


def _cpu_time(fns, reps=1, min_calls=1):
    t0 = time.perf_counter()
    fns[0]()
    return (time.perf_counter() - t0) * 1e6


# ---------------------------------------------------------------- vLLM baselines
class VllmKernels:
    """Marlin and Machete set up from the same checkpoint tensors as ours."""

    def __init__(self):
        from vllm import _custom_ops as ops
        from vllm.model_executor.layers.quantization.utils import marlin_utils as mu
        from vllm.scalar_type import scalar_types

        self.ops, self.mu, self.st = ops, mu, scalar_types
        import vllm

        self.version = vllm.__version__

    def wtype(self, bits, sym):
        st = self.st
        return {(4, True): st.uint4b8, (8, True): st.uint8b128, (4, False): st.uint4, (8, False): st.uint8}[(bits, sym)]

    def marlin(self, ck, k, n):
        """A closure computing x @ W.T with Marlin, or None if it does not apply."""
        bits, gs, sym = ck["bits"], ck["group_size"], ck["zero_point_offset"] == 1
        if (bits, sym) not in ((4, True), (8, True), (4, False)):
            return None
        mu, dev = self.mu, ck["qweight"].device
        empty = mu.marlin_make_empty_g_idx(dev)
        q = self.ops.gptq_marlin_repack(ck["qweight"], empty, k, n, bits)
        s = mu.marlin_permute_scales(ck["scales"].to(torch.bfloat16), k, n, gs)
        if sym:
            zp = empty
        else:
            zeros = unpack_cols(ck["qzeros"], bits) + ck["zero_point_offset"]
            zp = mu.marlin_zero_points(zeros, k // gs, n, bits)
        ws = mu.marlin_make_workspace_new(dev)
        wtype = self.wtype(bits, sym)

        def f(x):
            return mu.apply_gptq_marlin_linear(input=x, weight=q, weight_scale=s, weight_zp=zp, g_idx=empty,
                                               g_idx_sort_indices=empty, workspace=ws, wtype=wtype,
                                               output_size_per_partition=n, input_size_per_partition=k,
                                               is_k_full=True, bias=None)
        return f

    def machete(self, ck, k, n):
        bits, gs, sym = ck["bits"], ck["group_size"], ck["zero_point_offset"] == 1
        if bits not in (4, 8) or gs not in (-1, 64, 128):
            return None
        wtype = self.wtype(bits, sym)
        q = self.ops.machete_prepack_B(ck["qweight"].t().contiguous().t(), a_type=torch.bfloat16, b_type=wtype,
                                       group_scales_type=torch.bfloat16)
        s = ck["scales"].to(torch.bfloat16).contiguous()
        z = None
        if not sym:
            zeros = (unpack_cols(ck["qzeros"], bits) + ck["zero_point_offset"]).to(torch.bfloat16)
            z = (-1.0 * s * zeros).contiguous()

        def f(x):
            return self.ops.machete_mm(a=x, b_q=q, b_type=wtype, b_group_scales=s, b_group_zeros=z, b_group_size=gs)
        return f


# ---------------------------------------------------------------- precompile (parallel)
def _precompile(scheme, cfg_dicts):
    from vllm_autoround.kernels.launch import KernelConfig

    _, bits, gs, sym, _, _ = scheme
    ck = random_checkpoint(bits, gs, sym, 1024, 352)
    p = prepared(ck)
    x = torch.randn(20, 1024, device=DEV, dtype=torch.bfloat16)
    failed = 0
    for d in cfg_dicts:
        cfg = KernelConfig(**d)
        try:
            run(x[: min(cfg.block_m, 20)] if cfg.kind != "gemv" else x[:1], p, cfg)
        except Exception:  # noqa: BLE001 - the tuner skips configs that fail here
            failed += 1
    torch.cuda.synchronize()
    return failed


def precompile(workers):
    tasks = []
    for scheme in SCHEMES:
        cfgs = []
        for m in scheme[4]:
            for c in candidates(m_bucket(m), 0, 0, scheme[1], scheme[3]):
                if c.to_dict() not in cfgs:
                    cfgs.append(c.to_dict())
        for i in range(0, len(cfgs), 3):
            tasks.append((scheme, cfgs[i:i + 3]))
    t0 = time.time()
    failed = 0
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        for f in as_completed([ex.submit(_precompile, *t) for t in tasks]):
            try:
                failed += f.result()
            except Exception as exc:  # noqa: BLE001
                print("precompile worker failed:", repr(exc)[:200], flush=True)
    print(f"precompiled {len(tasks)} batches in {time.time() - t0:.0f}s ({failed} config launches failed)",
          flush=True)


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--workers", type=int, default=15)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--shapes", default="all", help="'all' or e.g. 4096x14336,8192x28672 (KxN)")
    ap.add_argument("--budget-seconds", type=float, default=1e9, help="stop measuring new schemes after this")
    ap.add_argument("--schemes", help="comma-separated scheme names, e.g. 'W3 g64 sym' (default: all)")
    ap.add_argument("--dry-run", action="store_true", help="CPU smoke test of this script (TRITON_INTERPRET=1)")
    args = ap.parse_args()
    global DEV, MS, SCHEMES
    if args.schemes:
        wanted = [w.strip() for w in args.schemes.split(",")]
        unknown = [w for w in wanted if w not in {s[0] for s in SCHEMES}]
        if unknown:
            ap.error(f"--schemes: unknown {unknown}; known: {[s[0] for s in SCHEMES]}")
        SCHEMES = [s for s in SCHEMES if s[0] in wanted]
    timer = time_graph
    if args.dry_run:
        DEV, MS, args.shapes, args.no_vllm = "cpu", [1, 16, 64], "512x64", True
        timer = _cpu_time
    os.makedirs(args.out, exist_ok=True)
    shapes = SHAPES if args.shapes == "all" else [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
    t_start = time.time()
    dev_name = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)"
    print(dev_name, "torch", torch.__version__, flush=True)
    if DEV == "cuda":
        precompile(args.workers)
    vk = None
    if not args.no_vllm:
        try:
            vk = VllmKernels()
            print("vllm", vk.version, flush=True)
        except Exception as exc:  # noqa: BLE001
            print("vLLM kernels unavailable:", repr(exc)[:300], flush=True)
    rows = []
    jsonf = open(os.path.join(args.out, "bench.jsonl"), "w")

    def record(row):
        rows.append(row)
        jsonf.write(json.dumps(row) + "\n")
        jsonf.flush()

    x_all = torch.randn(max(MS), max(k for k, _ in shapes), device=DEV, dtype=torch.bfloat16)
    bf16 = {}
    for k, n in shapes:
        w16 = dense_copies(n, k, DEV)
        for m in MS:
            x = x_all[:m, :k]
            bf16[k, n, m] = timer([lambda w=w, x=x: torch.nn.functional.linear(x, w) for w in w16], **_reps(m, k, n))
        del w16
        if DEV == "cuda":
            torch.cuda.empty_cache()
    print(f"bf16 baselines done {time.time() - t_start:.0f}s", flush=True)
    deadline = t_start + args.budget_seconds
    for name, bits, gs, sym, ms, with_vllm in SCHEMES:
        for k, n in shapes:
            if time.time() > deadline:
                print(f"time budget spent: {name} {k}x{n} not measured", flush=True)
                continue
            x_k = x_all[:, :k].contiguous()
            nbytes = weight_bytes(bits, gs, k, n, sym)
            copies = copies_for(nbytes)
            cks = [random_checkpoint(bits, gs, sym, k, n, device=DEV, seed=i) for i in range(copies)]
            preps = [prepared(c) for c in cks]
            others = {}
            if vk is not None and with_vllm:
                for label, make in (("marlin", vk.marlin), ("machete", vk.machete)):
                    try:
                        fs = [make(c, k, n) for c in cks]
                        if fs[0] is not None:
                            others[label] = fs
                    except Exception as exc:  # noqa: BLE001
                        print(f"{label} setup failed for {name}: {repr(exc)[:300]}", flush=True)
            ref_w = reference_weight(cks[0])  # [N, K] float32
            for m in [m for m in ms if m in MS]:
                x = x_k[:m]
                row = dict(shape=f"{k}x{n}", k=k, n=n, m=m, scheme=name, bytes=nbytes, bf16_us=bf16[k, n, m])
                try:
                    ref = x.float() @ ref_w.t()
                    y = torch.full((m, n), float("nan"), device=DEV, dtype=torch.bfloat16)
                    y.copy_(quantized_linear(x, preps[0]))
                    row["err"] = rel_err(y, ref)
                    row["us"] = timer([lambda p=p, x=x: quantized_linear(x, p) for p in preps], **_reps(m, k, n))
                    row["config"] = TUNER.choose(x, preps[0]).to_dict()
                    for label, fs in others.items():
                        try:
                            row[f"{label}_err"] = rel_err(fs[0](x), ref)
                            row[f"{label}_us"] = timer([lambda f=f, x=x: f(x) for f in fs], **_reps(m, k, n))
                        except Exception as exc:  # noqa: BLE001
                            row[f"{label}_error"] = repr(exc)[:200]
                except Exception as exc:  # noqa: BLE001
                    row["error"] = repr(exc)[:300]
                    print(traceback.format_exc()[-1500:], flush=True)
                record(row)
                print(_line(row), flush=True)
            del preps, cks, others, ref_w, x_k
            if DEV == "cuda":
                torch.cuda.empty_cache()
    table = markdown(rows, dev_name, vk.version if vk else None)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(table)
    print(table)
    print(bars(rows))
    print(f"total {time.time() - t_start:.0f}s")


def _reps(m, k, n):
    flops = 2 * m * k * n
    if flops > 2e11:
        return dict(reps=8, min_calls=6)
    return dict(reps=15, min_calls=16)


def _line(r):
    parts = [f"{r['shape']:>11} M={r['m']:<5} {r['scheme']:<13}"]
    if "us" in r:
        parts.append(f"ours {r['us']:8.1f}us err {r['err']:.1e}")
    for label in ("marlin", "machete"):
        if f"{label}_us" in r:
            parts.append(f"{label} {r[f'{label}_us']:8.1f}us err {r[f'{label}_err']:.1e}")
    parts.append(f"bf16 {r['bf16_us']:8.1f}us")
    if "error" in r:
        parts.append("ERROR " + r["error"])
    return " | ".join(parts)


def _cfg(c):
    if not c:
        return ""
    if c["kind"] == "gemv":
        return f"gemv n{c['block_n']} w{c['waves']:g}{' pf' if c['prefetch'] else ''}"
    if c["kind"] == "gemm16":
        return f"reg-mma {c['block_m']}x{c['block_n']} w{c['waves']:g} st{c['num_stages']}"
    if c["kind"] == "gemm":
        return (f"mma {c['block_m']}x{c['block_n']} w{c['waves']:g}{' wf' if c['w_first'] else ''}"
                f"{' pf' if c['prefetch'] else ''}")
    if c["kind"] == "wgmma":
        cap = f" r{c['max_registers']}" if c.get("max_registers") else ""
        return f"gluon {c['block_m']}x{c['block_n']} w{c['waves']:g} st{c['num_stages']}{cap}"
    if c["kind"] == "tma_gemv":
        return f"tma gemv n{c['block_n']} w{c['waves']:g} st{c['num_stages']} x{c['num_warps']}"
    return "dequant+cuBLAS" if c["kind"] == "dequant" else c["kind"]


def markdown(rows, dev_name, vllm_version):
    out = [f"Device: {dev_name}; vLLM {vllm_version}; times in µs (CUDA-graph replay, weights rotated past L2); "
           "TB/s = checkpoint bytes of the weight / time; ×X = X's time / ours.", "",
           "| K×N | M | scheme | ours µs | ours TB/s | Marlin µs | Machete µs | bf16 µs | ×Marlin | ×Machete "
           "| ×bf16 | err | kernel |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        us = r.get("us")
        if us is None:
            out.append(f"| {r['shape']} | {r['m']} | {r['scheme']} | error: {r.get('error', '')[:80]} |"
                       " | | | | | | | | |")
            continue

        def cell(key, r=r):
            v = r.get(key)
            return f"{v:.1f}" if v else "–"

        def ratio(key, r=r, us=us):
            v = r.get(key)
            return f"{v / us:.2f}" if v else "–"
        out.append(f"| {r['shape']} | {r['m']} | {r['scheme']} | {us:.1f} | {r['bytes'] / us / 1e6:.2f} | "
                   f"{cell('marlin_us')} | {cell('machete_us')} | {r['bf16_us']:.1f} | {ratio('marlin_us')} | "
                   f"{ratio('machete_us')} | {ratio('bf16_us')} | {r['err']:.1e} | {_cfg(r.get('config'))} |")
    return "\n".join(out) + "\n"


def bars(rows):
    """The issue's bars, met or missed, from this run's numbers."""
    get = {(r["shape"], r["m"], r["scheme"]): r for r in rows if r.get("us")}
    lines = ["Bars:"]

    def check(label, ok, detail):
        lines.append(f"  [{'met' if ok else 'MISSED'}] {label}: {detail}")

    for shape in sorted({r["shape"] for r in rows}):
        for scheme, w4bar, w16bar in (("W4 g128 sym", 2.0, 1.5), ("W4 g128 asym", 2.0 * 0.9, 1.5 * 0.9),
                                      ("W8 g128 sym", 2.0 * 0.9, 1.5 * 0.9)):
            for m, bar in ((1, w4bar), (16, w16bar)):
                r = get.get((shape, m, scheme))
                if r and r.get("marlin_us"):
                    sp = r["marlin_us"] / r["us"]
                    check(f"{scheme} {shape} M={m} >= {bar:.2f}x Marlin", sp >= bar, f"{sp:.2f}x")
            bar = 0.95 if scheme == "W4 g128 sym" else 0.95 * 0.9
            for m in (256, 1024, 4096):
                r = get.get((shape, m, scheme))
                if r:
                    sp = r["bf16_us"] / r["us"]
                    check(f"{scheme} {shape} M={m} >= {bar:.2f}x bf16", sp >= bar, f"{sp:.2f}x")
        w4 = get.get((shape, 1, "W4 g128 sym"))
        for scheme, bar in (("W2 g64 sym", 1.3), ("W3 g64 sym", 1.15)):
            r = get.get((shape, 1, scheme))
            if r and w4:
                sp = w4["us"] / r["us"]
                check(f"{scheme} {shape} M=1 >= {bar}x our W4", sp >= bar, f"{sp:.2f}x")
    errs = [r["err"] for r in rows if "err" in r]
    check("our outputs vs float32", all(e < ERR_BOUND for e in errs), f"max rel err {max(errs, default=0):.1e}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
