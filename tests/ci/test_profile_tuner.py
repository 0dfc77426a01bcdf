"""ci/gpu/profile_tuner.py off the GPU: its FLOP floor, kernel classes, and a tiny run through the real tuner."""

from __future__ import annotations

import json

import pytest

from ci.bench_tuner import SHAPES
from ci.gpu.profile_tuner import kernel_class, main, matmul_tflop

LLAMA3_8B = SHAPES["llama3_8b"]


def test_matmul_floor_of_the_llama3_8b_block():
    # forward 2 * 16384 * (4096 * 6144 + 4096 * 4096 + 2 * 4096 * 14336 + 14336 * 4096) = 7.1468 TFLOP; the
    # input gradient skips q/k/v (2 * 16384 * 4096 * 6144 = 0.8246 TFLOP)
    assert matmul_tflop(LLAMA3_8B, 8 * 2048) == pytest.approx(3 * 7.14680 - 0.82463, rel=1e-4)


@pytest.mark.parametrize("name, cls", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "gemm"),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopB_TNT", "gemm"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128_1x4x1_cga1x1x1_kernel0",
     "attention"),
    ("triton_per_fused__to_copy_add_clamp_mul_round_sub_0", "triton"),
    ("void at::native::vectorized_elementwise_kernel<4>", "other"),
])
def test_kernel_classes(name, cls):
    assert kernel_class(name) == cls


def test_small_run_profiles_the_requested_iterations(tmp_path):
    out = tmp_path / "profile.json"
    assert main(["--small", "--iters", "8", "--profile_from", "3", "--profile_count", "2", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["iterations"] == 2
    assert summary["wall_ms"] > 0
    assert summary["compile"] == "off"
    from vllm_autoround.quantize import iteration_graph

    assert iteration_graph.on_iteration is None  # the tuner is left as it was
