"""Reading torch's int4-packed CPU layout back, on this machine's CPU and on the AVX2 and plain code paths."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vllm_autoround.kernels import cpu_int4_layout

ROOT = Path(__file__).resolve().parents[2]


def test_this_cpu_packs_in_a_known_layout_and_reads_back_exactly():
    lay = cpu_int4_layout.layout()
    assert lay in cpu_int4_layout.KNOWN_LAYOUTS
    n, k = 3 * lay.rows, 512
    codes = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    read = cpu_int4_layout.codes(packed, lay.rows, n, k, lay)  # the last two blocks
    assert torch.equal(read.transpose(1, 2).reshape(n - lay.rows, k), codes[lay.rows:].to(torch.uint8))


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_other_cpu_code_paths_are_read_back_too(capability):
    """torch picks its packing by the CPU's instruction set at startup (ATEN_CPU_CAPABILITY lowers it): in a fresh
    process each path's layout is found, and a W4 and a W8 layer's dequantized path agrees with float64."""
    script = textwrap.dedent("""
        import torch
        from tests.kernels.helpers import checkpoint, rel_err
        from vllm_autoround.kernels import cpu_int4, cpu_int4_layout, cpu_int8
        found = torch.backends.cpu.get_cpu_capability()
        assert found == {capability!r}.upper(), found
        print(cpu_int4_layout.layout())
        for bits, module in ((4, cpu_int4), (8, cpu_int8)):
            ck = checkpoint(bits, 64, False, 256, 40, seed=bits)
            w = module.pack(ck["qweight"], ck["qzeros"], ck["scales"], bits, 64, ck["zero_point_offset"],
                            torch.bfloat16)
            x = torch.randn(module.OP_MAX_ROWS + 2, 256, dtype=torch.float64)
            assert rel_err(module.linear(x.to(torch.bfloat16), w), x @ ck["w64"].t()) < 6e-3
    """).format(capability=capability)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "BlockLayout(rows=32" in out.stdout
