"""Shared by the GPU kernel scripts: random checkpoint tensors, float32 references, graph timing."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from vllm_autoround.format.packing import pack_cols
from vllm_autoround.kernels.reference import dequantize
from vllm_autoround.kernels.timing import copies_for, l2_bytes  # noqa: F401 - the scripts import them from here
from vllm_autoround.kernels.timing import graph_time_us as time_graph  # noqa: F401
from vllm_autoround.kernels.tuning import relative_difference


def random_checkpoint(bits: int, group_size: int, sym: bool, k: int, n: int, device: str = "cuda",
                      seed: int = 0) -> dict:
    """Checkpoint tensors with uniformly random codes (timing does not care how they were tuned).

    sym: zero point 2**(bits-1) stored minus one (``auto_round:auto_gptq``); asym: random zero points
    stored raw (``auto_round``). Scales are random of both signs, like auto-round's sym scheme.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    words = k * bits // 32
    qweight = torch.randint(-2**31, 2**31 - 1, (words, n), dtype=torch.int32, device=device, generator=g)
    groups = 1 if group_size == -1 else k // group_size
    if sym:
        zeros = torch.full((groups, n), 2 ** (bits - 1) - 1, dtype=torch.int32, device=device)
        offset = 1
    else:
        zeros = torch.randint(0, 2**bits, (groups, n), dtype=torch.int32, device=device, generator=g)
        offset = 0
    scales = (torch.rand(groups, n, device=device, generator=g) * 0.02 + 0.005)
    scales = (scales * torch.where(torch.rand(groups, n, device=device, generator=g) < 0.5, -1.0, 1.0)).half()
    return dict(qweight=qweight, qzeros=pack_cols(zeros, bits), scales=scales, bits=bits, group_size=group_size,
                zero_point_offset=offset)


def reference_weight(ckpt: dict) -> torch.Tensor:
    """Float32 ``[N, K]`` weight from the checkpoint tensors (the torch reference's dequantizer)."""
    return dequantize(ckpt["qweight"], ckpt["qzeros"], ckpt["scales"], ckpt["bits"], ckpt["group_size"],
                      ckpt["zero_point_offset"], torch.float32)


def reference_out(x: torch.Tensor, ckpt: dict, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 ``x @ W.T + bias`` from the checkpoint tensors (the torch reference's dequantizer)."""
    w = dequantize(ckpt["qweight"], ckpt["qzeros"], ckpt["scales"], ckpt["bits"], ckpt["group_size"],
                   ckpt["zero_point_offset"], torch.float32)
    y = x.float() @ w.t()
    return y if bias is None else y + bias.float()


def probe_parser(budget: float) -> argparse.ArgumentParser:
    """The options every probe script takes: where the JSON goes, a time budget, which CASES to run."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=budget, help="seconds; later cases are skipped")
    ap.add_argument("--cases", help="indices into CASES, comma-separated (default: all)")
    return ap


def case_weights(bits: int, group_size: int, sym: bool, k: int, n: int) -> tuple[dict, int, list, list]:
    """One probe case's random checkpoint, its byte count, repacked copies and bf16 copies past L2."""
    ck = random_checkpoint(bits, group_size, sym, k, n)
    nbytes = weight_bytes(bits, group_size, k, n, sym)
    return ck, nbytes, prepared_copies(ck, nbytes), dense_copies(n, k)


def time_runs(rows: list, label: str, x: torch.Tensor, ck: dict, preps: list, runs: list, bf16: float,
              check_fp16=lambda i, cfg: False, **extra) -> None:
    """Check each ``(kernel name, config, fn(x, prepared))`` of ``runs`` against the float32 reference, time
    it over ``preps`` and append a row (``extra`` fields added; fp16 error too where ``check_fp16(i, cfg)``);
    a run that fails is reported and the sweep goes on. Shared by the probe scripts."""
    ref = reference_out(x, ck)
    for i, (kernel, cfg, fn) in enumerate(runs):
        try:
            err = rel_err(fn(x, preps[0]), ref)
            us = time_graph([lambda p=p, fn=fn: fn(x, p) for p in preps])
            # checked again after the timed replays: state a kernel borrows (split-K counters) must come back
            err = max(err, rel_err(fn(x, preps[0]), ref))
        except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
            rows.append(dict(shape=label, kernel=kernel, error=str(exc)[:300]))
            print(f"{label:34} {kernel:52} failed: {str(exc)[:200]}", flush=True)
            continue
        row = dict(shape=label, kernel=kernel, config=cfg.to_dict(), us=us, rel_err=err, x_bf16=bf16 / us,
                   **{key: value / us for key, value in extra.items()})
        if check_fp16(i, cfg):
            xh = x.half()
            row["rel_err_fp16"] = rel_err(fn(xh, preps[0]), reference_out(xh, ck))
        rows.append(row)
        print(f"{label:34} {kernel:52} {us:8.1f} us  x{bf16 / us:.2f} bf16 ({bf16:.1f})  err {err:.1e}"
              + (f" fp16 {row['rel_err_fp16']:.1e}" if "rel_err_fp16" in row else ""), flush=True)


def sweep(a: argparse.Namespace, cases: list, ms: list[int], configs: Callable, check_fp16: Callable,
          bandwidth: bool = False) -> None:
    """A probe's sweep: for each ``(bits, group, sym, K, N)`` case (until ``a.budget`` seconds are spent) and M,
    bf16 ``F.linear``, then every ``(name, config)`` of ``configs(m, bits, default)`` through the launcher
    serving uses, checked and timed by :func:`time_runs`. The rows go to ``a.out`` after each case."""
    from vllm_autoround.kernels.launch import run
    from vllm_autoround.kernels.tuning import default_config, m_bucket

    t0 = time.time()
    rows: list = []
    for bits, gs, sym, k, n in cases:
        if time.time() - t0 > a.budget:
            print(f"budget spent: W{bits} {k}x{n} skipped", flush=True)
            continue
        ck, nbytes, preps, dense = case_weights(bits, gs, sym, k, n)
        for m in ms:
            label = f"W{bits} g{gs} {'sym' if sym else 'asym'} {k}x{n} M={m}"
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16 = time_graph([lambda w=w, x=x: F.linear(x, w) for w in dense])
            rows.append(dict(shape=label, kernel="bf16 F.linear", us=bf16))
            default = default_config(m_bucket(m), n, k, bits, sym, gs)
            runs = [(kernel, c, lambda x, p, c=c: run(x, p, c)) for kernel, c in configs(m, bits, default)]
            time_runs(rows, label, x, ck, preps, runs, bf16, check_fp16=check_fp16,
                      **({"tb_s": nbytes / 1e6} if bandwidth else {}))
        del preps, dense
        torch.cuda.empty_cache()
        Path(a.out).write_text(json.dumps(rows, indent=1))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """The tuner's relative difference, infinite rather than NaN on non-finite output, so a table's max shows it."""
    d = relative_difference(y, ref)
    return math.inf if math.isnan(d) else d


def dense_copies(n: int, k: int, device: str = "cuda") -> list[torch.Tensor]:
    """bf16 ``[n, k]`` weights (std 0.02), enough copies that timing ``F.linear`` over them streams past L2."""
    return [torch.randn(n, k, device=device, dtype=torch.bfloat16) * 0.02 for _ in range(copies_for(2 * k * n))]


def prepared(ckpt: dict, copy_scales: bool = False, bias: torch.Tensor | None = None):
    """The kernels' repacked weight of a :func:`random_checkpoint` (copy_scales: its own copy of the scales)."""
    from vllm_autoround.kernels.layout import prepare_weight

    scales = ckpt["scales"].clone() if copy_scales else ckpt["scales"]
    return prepare_weight(ckpt["qweight"], ckpt["qzeros"], scales, bits=ckpt["bits"], group_size=ckpt["group_size"],
                          zero_point_offset=ckpt["zero_point_offset"], bias=bias)


def prepared_copies(ckpt: dict, nbytes: int) -> list:
    """Repacked copies of one checkpoint (scales copied too, so no copy shares L2-resident bytes), enough
    that cycling through them streams ``nbytes`` per copy past L2."""
    return [prepared(ckpt, copy_scales=True) for _ in range(copies_for(nbytes))]


def weight_bytes(bits: int, group_size: int, k: int, n: int, sym: bool) -> int:
    """Checkpoint bytes of one weight: codes, fp16 scales, packed zero points when asym.

    Effective bandwidth = these bytes / time, the same yardstick for every kernel compared."""
    groups = 1 if group_size == -1 else k // group_size
    return k * n * bits // 8 + groups * n * 2 + (0 if sym else groups * n * bits // 8)


def load_triton_kernels(path: str):
    """The ``triton_kernels`` module of an older checkout, loaded from its file (a probe's ``--baseline``)."""
    spec = importlib.util.spec_from_file_location("baseline_triton_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def launching(tk_module) -> Iterator[None]:
    """Make the current launchers (``kernels.launch``) run ``tk_module``'s kernels: an older kernel file
    with the current kernel arguments is timed through the same launch code as the current one."""
    from vllm_autoround.kernels import launch

    current = launch.tk
    launch.tk = tk_module
    try:
        yield
    finally:
        launch.tk = current
