"""The stream-K schedule of the Gluon kernel (kernels/wgmma_gemm.py), replayed in Python on a real product.

The kernel itself needs a Hopper GPU (ci/gpu/probe_wgmma.py checks its values there). Its schedule is integer
arithmetic: which program runs which (tile, K block) units, which slot holds each partial sum, which program
finishes a shared tile and whose slots it adds. These tests replay that arithmetic with the kernel's formulas
and real matrices, so a slot collision, a lost K range or a tile finished twice shows up as a wrong product.
"""

from __future__ import annotations

import pytest
import torch

from vllm_autoround.kernels.wgmma_gemm import streamk_runs


def run_of(u: int, total: int, programs: int) -> int:
    """The kernel's ``_run_of``: the program whose run holds unit u."""
    return ((u + 1) * programs - 1) // total


def replay(x: torch.Tensor, w: torch.Tensor, block_m: int, block_n: int, bk: int, programs: int) -> torch.Tensor:
    """``x @ w.T`` computed as the stream-K kernel schedules it, float64, programs run in a shuffled order."""
    m, k = x.shape
    n = w.shape[0]
    m_tiles, n_tiles, kb = -(-m // block_m), -(-n // block_n), -(-k // bk)
    total = m_tiles * n_tiles * kb
    programs = max(1, min(programs, total))
    runs = streamk_runs(total, programs)
    slots: dict[int, torch.Tensor] = {}
    counters = [0] * (m_tiles * n_tiles)
    out = torch.full((m, n), float("nan"), dtype=torch.float64)
    finished = set()
    for pid in torch.randperm(programs, generator=torch.Generator().manual_seed(programs)).tolist():
        begin, end = runs[pid]
        u = begin
        while u < end:
            t, kb0 = divmod(u, kb)
            nb = min(kb - kb0, end - u)
            pid_n, pid_m = divmod(t, m_tiles)
            rows = slice(pid_m * block_m, min(m, (pid_m + 1) * block_m))
            cols = slice(pid_n * block_n, min(n, (pid_n + 1) * block_n))
            ks = slice(kb0 * bk, min(k, (kb0 + nb) * bk))
            acc = x[rows, ks] @ w[cols, ks].T
            if nb == kb:
                out[rows, cols] = acc
                finished.add(t)
            else:
                slot = 2 * pid + (u != begin)
                assert slot not in slots, f"slot {slot} written twice"
                slots[slot] = acc
                first, last = run_of(t * kb, total, programs), run_of(t * kb + kb - 1, total, programs)
                assert first <= pid <= last
                counters[t] += 1
                if counters[t] == last - first + 1:
                    assert t not in finished
                    y = torch.zeros_like(acc)
                    for q in range(first, last + 1):
                        y += slots[2 * q + (runs[q][0] < t * kb)]
                    out[rows, cols] = y
                    finished.add(t)
                    counters[t] = 0
            u += nb
    assert finished == set(range(m_tiles * n_tiles))
    return out


def test_runs_cover_every_unit_once_and_run_of_inverts_them():
    for total in (1, 7, 32, 112 * 32, 3584, 1000):
        for programs in (1, 3, 132, 264, min(total, 1000)):
            programs = min(programs, total)
            runs = streamk_runs(total, programs)
            assert runs[0][0] == 0 and runs[-1][1] == total
            assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(runs, runs[1:], strict=False))
            for u in range(0, total, max(1, total // 97)):
                p = run_of(u, total, programs)
                assert runs[p][0] <= u < runs[p][1]


@pytest.mark.parametrize(("m", "n", "k", "block_m", "block_n", "bk", "programs"), [
    (256, 14336 // 64, 4096 // 32, 256, 128 // 64, 128 // 32, 132),  # 112 tiles of 32 K blocks, 132 programs
    (256, 4096 // 64, 14336 // 32, 256, 128 // 64, 128 // 32, 132),  # 32 tiles of 112 blocks: up to 6 runs a tile
    (37, 50, 40, 16, 16, 8, 7),  # M, N and K tails, fewer programs than tiles
    (5, 24, 16, 8, 8, 8, 40),  # more programs than units: clamped to one unit each
    (64, 64, 64, 64, 64, 8, 1),  # one program runs everything
])
def test_streamk_schedule_computes_the_product(m, n, k, block_m, block_n, bk, programs):
    g = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, dtype=torch.float64, generator=g)
    w = torch.randn(n, k, dtype=torch.float64, generator=g)
    torch.testing.assert_close(replay(x, w, block_m, block_n, bk, programs), x @ w.T, rtol=1e-12, atol=1e-12)
