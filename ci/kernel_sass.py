"""Count the machine instructions of the gemv kernel's main loop, for sm_90, on a machine without a GPU.

``--kernel wgmma`` reports the Gluon large-M kernel's registers, spills and MMAs (``kernels.wgmma_gemm``).
``--kernel gemm16`` instead reports how the register-operand gemm kernel compiles: which tiles reach the
weight operand's register layout per K block (one int32 word tile, no decoded tiles), which are pipelined
with cp.async, and whether every MMA takes the weight from registers (docs/kernels.md, "The register-operand gemm").

Triton's wheel carries ``ptxas`` and ``nvdisasm``, so the kernels compile to Hopper SASS here; the loop's
instruction mix per decoded weight value and the register count say, before any device time is spent,
whether a kernel change cuts the work per value (the M=1 kernel is issue-bound on the H100: see
docs/kernels.md). Integer arguments get the divisibility-by-16 specialization a real launch gets. Run it
in a process where Triton is not interpreting (``TRITON_INTERPRET`` unset when triton is imported).

    python ci/kernel_sass.py --bits 4 --block_n 128 --warp_n 32 --warps 4
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALIGNED_ARGS = ("x_ptr", "w_ptr", "s_ptr", "z_ptr", "b_ptr", "out_ptr", "part_ptr", "cnt_ptr", "N", "K",
                "stride_xm", "stride_om")
OPCODE = re.compile(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)")
BRANCH = re.compile(r"BRA `\((\.L_x_\d+)\)")


def compile_gemv(bits: int, group_size: int, block_n: int, warps: int, prefetch: bool = False, warp_n: int = 32,
                 sym: bool = True):
    """The bf16 gemv kernel compiled for sm_90 (split-K on, K and N whole blocks and tiles)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tk = _triton_kernels()
    kernel = tk.gemv_kernel
    signature = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*fp16", "b_ptr": "*bf16",
                 "out_ptr": "*bf16", "part_ptr": "*fp32", "cnt_ptr": "*i32"}
    signature |= {name: "i32" for name in ("M", "N", "K", "stride_xm", "stride_om", "num_blocks",
                                           "blocks_per_split", "split_k", "opaque_zero")}
    constants = dict(BITS=bits, R=16, GS=group_size, ZERO=2 ** (bits - 1) if sym else -1, HAS_BIAS=False,
                     BLOCK_N=block_n, SPLIT=True, EVEN_K=True, PREFETCH=prefetch, WARP_N=min(warp_n, block_n),
                     EVEN_N=True, ROWS_OUTER=tk.ROWS_OUTER)
    signature |= {name: "constexpr" for name in constants}
    attrs = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in ALIGNED_ARGS}
    signature = {name: signature[name] for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=2))


def compile_gemm16(bits: int, group_size: int, block_m: int, block_n: int, warps: int, stages: int = 2,
                   sym: bool = True):
    """The register-operand gemm kernel compiled for sm_90 (split-K on, whole K blocks and N tiles)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _triton_kernels().gemm16_kernel
    signature = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*fp16" if sym else "*u8",
                 "b_ptr": "*bf16", "out_ptr": "*bf16", "part_ptr": "*fp32", "cnt_ptr": "*i32"}
    signature |= {name: "i32" for name in ("M", "N", "K", "stride_xm", "stride_om", "num_blocks",
                                           "blocks_per_split", "split_k")}
    constants = dict(BITS=bits, R=16, GS=group_size, ZERO=2 ** (bits - 1) if sym else -1, HAS_BIAS=False,
                     BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=True, EVEN_K=True, EVEN_N=True, INTERPRETED=False)
    signature |= {name: "constexpr" for name in constants}
    attrs = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in ALIGNED_ARGS if a in kernel.arg_names}
    signature = {name: signature[name] for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


# A tile read from shared memory into the MMA's register operand (A, opIdx 0), or converted to it.
_TO_A_OPERAND = re.compile(r"ttg\.(?:local_load|convert_layout) [^\n]*-> tensor<\d+x\d+x(\w+), "
                           r"#ttg\.dot_op<\{opIdx = 0")
_ASYNC_COPY = re.compile(r"ttg\.async_copy_global_to_local [^\n]*-> <\d+x\d+x(\w+),")


def gemm16_report(bits: int, group_size: int, block_m: int = 16, block_n: int = 128, warps: int = 4,
                  stages: int = 2, sym: bool = True) -> dict:
    """Tiles brought into the weight operand's register layout per K block (by element type), tiles loaded
    with cp.async, MMAs with the weight in registers, loop instructions per weight value."""
    compiled = compile_gemm16(bits, group_size, block_m, block_n, warps, stages, sym)
    ttgir = compiled.asm["ttgir"]
    dots = re.findall(r"warp_group_dot %\S+, %\S+, %\S+ .*?: tensor<\d+x\d+x\w+, #ttg\.dot_op", ttgir)
    sass, usage = disassemble(compiled.asm["cubin"])
    ops = main_loop_opcodes(sass)
    values_per_thread = _values_per_thread(bits, block_n, warps)
    regs = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    return {"spilled_bytes": int(local.group(1)) if local else None,
            "a_operand_tiles": dict(collections.Counter(_TO_A_OPERAND.findall(ttgir))),
            "async_copied": sorted(set(_ASYNC_COPY.findall(ttgir))), "register_operand_dots": len(dots),
            "registers": int(regs.group(1)) if regs else None, "loop_instructions": sum(ops.values()),
            "per_value": sum(ops.values()) / values_per_thread, "opcodes": dict(ops.most_common())}


def _values_per_thread(bits: int, block_n: int, warps: int) -> float:
    """Weight values one thread decodes per K block: 16 word rows x BLOCK_N words, 32 // bits codes per word
    (3 bits: 32 codes per three words, as ``layout.slices_per_block``; not imported, to keep torch out)."""
    return 16 * block_n * (32 if bits == 3 else 32 // bits) / (32 * warps)


def _triton_kernels():
    """``vllm_autoround/kernels/triton_kernels.py`` loaded by path: it needs only Triton, not torch, so any
    Triton version can compile it (for example the GPU machine's, installed in a venv of its own)."""
    path = Path(__file__).resolve().parents[1] / "vllm_autoround" / "kernels" / "triton_kernels.py"
    spec = importlib.util.spec_from_file_location("triton_kernels_for_sass", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def disassemble(cubin: bytes) -> tuple[str, str]:
    """(SASS listing, resource usage) of a cubin, with the tools in Triton's wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        Path(path).write_bytes(cubin)
        sass = subprocess.run([_tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True,
                               text=True, check=True).stdout
    return sass, usage


def main_loop_opcodes(sass: str) -> collections.Counter:
    """Opcode counts of the longest backward branch's body: the loop over K blocks. A branch back across an
    EXIT is not a loop body (ptxas puts an mbarrier wait's retry after the kernel's end)."""
    lines = sass.splitlines()
    labels = {line.strip()[:-1]: i for i, line in enumerate(lines) if re.fullmatch(r"\s*\.L_x_\d+:", line)}
    exits = [i for i, line in enumerate(lines) if OPCODE.match(line) and OPCODE.match(line).group(1) == "EXIT"]
    start, end = 0, -1
    for i, line in enumerate(lines):
        m = BRANCH.search(line)
        if not m or labels.get(m.group(1), i) >= i or any(labels[m.group(1)] < e < i for e in exits):
            continue
        if i - labels[m.group(1)] > end - start:
            start, end = labels[m.group(1)], i
    ops = collections.Counter()
    for line in lines[start:end + 1]:
        m = OPCODE.match(line)
        if m:
            ops[m.group(1)] += 1
    return ops


def loop_report(bits: int, group_size: int, block_n: int, warps: int, prefetch: bool = False, warp_n: int = 32,
                sym: bool = True) -> dict:
    sass, usage = disassemble(compile_gemv(bits, group_size, block_n, warps, prefetch, warp_n, sym).asm["cubin"])
    ops = main_loop_opcodes(sass)
    values_per_thread = _values_per_thread(bits, block_n, warps)
    regs = re.search(r"REG:(\d+)", usage)
    return {"registers": int(regs.group(1)) if regs else None, "loop_instructions": sum(ops.values()),
            "per_value": sum(ops.values()) / values_per_thread, "opcodes": dict(ops.most_common())}


def compile_wgmma(bits: int, group_size: int, block_m: int, block_n: int, warps: int, stages: int, sym: bool = True,
                  fp16: bool = False, max_registers: int = 0):
    """The Gluon large-M kernel (``kernels.wgmma_gemm``) compiled for sm_90 (no split, bf16 or fp16 x)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from vllm_autoround.kernels import wgmma_gemm as wg

    kernel = wg.wgmma_gemm_kernel
    dt = "fp16" if fp16 else "bf16"
    x_layout = wg.x_layout(block_m, fp16)
    signature = {"x_desc": f"tensordesc<{dt}[{block_m}, {wg.CHUNK}],{x_layout!r}>", "w_ptr": "*i32",
                 "s_ptr": "*fp16", "z_ptr": "*fp16" if sym else "*u8", "b_ptr": f"*{dt}", "out_ptr": f"*{dt}",
                 "part_ptr": "*fp32", "cnt_ptr": "*i32"}
    signature |= {name: "i32" for name in ("M", "N", "K", "stride_om", "blocks_per_split", "split_k")}
    constants = dict(BITS=bits, GS=max(group_size, 0), ZERO=2 ** (bits - 1) if sym else -1, HAS_BIAS=False,
                     SPLIT=False, REDUCE=False, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
                     SCALES_AHEAD=not max_registers, num_warps=warps)
    signature |= {name: "constexpr" for name in constants}
    aligned = ("w_ptr", "s_ptr", "z_ptr", "b_ptr", "out_ptr", "part_ptr", "N", "K", "stride_om")
    attrs = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    signature = {name: signature[name] for name in kernel.arg_names}
    source = GluonASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    options = dict(num_warps=warps) | ({"maxnreg": max_registers} if max_registers else {})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def compile_tma_gemv(bits: int, group_size: int, block_n: int, warps: int, stages: int, sym: bool = True):
    """The Gluon TMA gemv (``kernels.tma_gemv``) compiled for sm_90 (split-K on, bf16 x)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from vllm_autoround.kernels import tma_gemv as tg
    from vllm_autoround.kernels.layout import block_k, slices_per_block

    kernel = tg.tma_gemv_kernel
    rows = block_k(bits) // group_size if 0 < group_size < block_k(bits) else 1
    words = f"tensordesc<i32[16, {block_n}],{tg.plain_layout(32)!r}>"
    x = f"tensordesc<bf16[{slices_per_block(bits)}, 16],{tg.plain_layout(16)!r}>"
    scales = f"tensordesc<fp16[{rows}, {block_n}],{tg.plain_layout(16)!r}>"
    zeros = scales if sym else f"tensordesc<u8[{rows}, {block_n}],{tg.plain_layout(8)!r}>"
    signature = {"w_desc": words, "x_desc": x, "s_desc": scales, "z_desc": zeros, "s_ptr": "*fp16",
                 "z_ptr": "*fp16" if sym else "*u8", "b_ptr": "*bf16", "out_ptr": "*bf16", "part_ptr": "*fp32",
                 "cnt_ptr": "*i32"}
    signature |= {name: "i32" for name in ("M", "N", "stride_xm", "stride_om", "num_blocks", "blocks_per_split",
                                           "split_k", "opaque_zero")}
    constants = dict(BITS=bits, GS=max(group_size, 0), ZERO=2 ** (bits - 1) if sym else -1, HAS_BIAS=False,
                     SPLIT=True, BLOCK_N=block_n, STAGES=stages, num_warps=warps)
    signature |= {name: "constexpr" for name in constants}
    aligned = ("s_ptr", "z_ptr", "b_ptr", "out_ptr", "part_ptr", "cnt_ptr", "N", "stride_xm", "stride_om")
    attrs = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    signature = {name: signature[name] for name in kernel.arg_names}
    source = GluonASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))


def tma_gemv_report(bits: int, group_size: int, block_n: int = 128, warps: int = 4, stages: int = 4,
                    sym: bool = True) -> dict:
    """How the TMA gemv compiles: registers, spills, TMA loads, and the K loop's instructions per weight value."""
    sass, usage = disassemble(compile_tma_gemv(bits, group_size, block_n, warps, stages, sym).asm["cubin"])
    ops = main_loop_opcodes(sass)
    regs = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    return {"registers": int(regs.group(1)) if regs else None, "spilled_bytes": int(local.group(1)) if local else None,
            "tma_loads": sass.count("UTMALDG"), "loop_instructions": sum(ops.values()),
            "per_value": sum(ops.values()) / _values_per_thread(bits, block_n, warps),
            "opcodes": dict(ops.most_common())}


_HGMMA = re.compile(r"HGMMA\.\w+\.F32\.(?:BF16|F16) R\d+, (\w+)")


def wgmma_report(bits: int, group_size: int, block_m: int = 128, block_n: int = 128, warps: int = 8, stages: int = 2,
                 sym: bool = True, fp16: bool = False, max_registers: int = 0) -> dict:
    """How the Gluon kernel compiles: registers and spills, the K loop's MMAs and where their weight operand
    comes from (a register, not a shared-memory descriptor), how often the code waits for MMAs (one wait per
    MMA: ptxas serialized them), and whether x arrives by TMA."""
    compiled = compile_wgmma(bits, group_size, block_m, block_n, warps, stages, sym, fp16, max_registers)
    sass, usage = disassemble(compiled.asm["cubin"])
    ops = main_loop_opcodes(sass)
    regs = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    a_operands = _HGMMA.findall(sass)
    return {"registers": int(regs.group(1)) if regs else None, "spilled_bytes": int(local.group(1)) if local else None,
            "loop_mmas": ops.get("HGMMA", 0), "register_operand_mmas": sum(a.startswith("R") for a in a_operands),
            "mmas": len(a_operands), "mma_waits": sass.count("WARPGROUP.DEPBAR"), "tma_loads": sass.count("UTMALDG"),
            "loop_local_memory_ops": ops.get("STL", 0) + ops.get("LDL", 0),
            "loop_instructions": sum(ops.values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kernel", default="gemv", choices=("gemv", "gemm16", "wgmma", "tma_gemv"))
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8))
    p.add_argument("--group_size", type=int, default=128)
    p.add_argument("--block_n", type=int, default=128)
    p.add_argument("--block_m", type=int, default=16, help="gemm16: activation rows per tile")
    p.add_argument("--stages", type=int, default=2, help="gemm16: pipeline stages")
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--warp_n", type=int, default=32, choices=(32, 64, 128))
    p.add_argument("--asym", action="store_true", help="zero points per group (default: one shared zero point)")
    p.add_argument("--max_registers", type=int, default=0, help="wgmma: ptxas's register cap (0: none)")
    p.add_argument("--prefetch", action="store_true")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    if a.kernel == "wgmma":
        print(json.dumps(wgmma_report(a.bits, a.group_size, block_m=a.block_m, block_n=a.block_n, warps=a.warps,
                                      stages=a.stages, sym=not a.asym, max_registers=a.max_registers)))
        return 0
    if a.kernel == "tma_gemv":
        print(json.dumps(tma_gemv_report(a.bits, a.group_size, block_n=a.block_n, warps=a.warps, stages=a.stages,
                                         sym=not a.asym)))
        return 0
    if a.kernel == "gemm16":
        print(json.dumps(gemm16_report(a.bits, a.group_size, block_m=a.block_m, block_n=a.block_n, warps=a.warps,
                                       stages=a.stages, sym=not a.asym)))
        return 0
    r = loop_report(a.bits, a.group_size, a.block_n, a.warps, a.prefetch, a.warp_n, not a.asym)
    if a.json:
        print(json.dumps(r))
        return 0
    print(f"W{a.bits} g{a.group_size} BLOCK_N {a.block_n} WARP_N {a.warp_n}, {a.warps} warps: "
          f"{r['registers']} registers, loop {r['loop_instructions']} instructions = "
          f"{r['per_value']:.2f} per weight value")
    print("  " + ", ".join(f"{op} {n}" for op, n in list(r["opcodes"].items())[:14]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
