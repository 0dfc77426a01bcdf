"""ci/gpu/bench_serve.py's --budget: under a wall-clock limit a call stops before a configuration that would not
finish, and still prints its table (the vLLM runs themselves need the GPU machine)."""

from __future__ import annotations

import json
import subprocess

from ci.gpu import bench_serve
from tests.ci.script_main import run_main


def test_next_config_fits_uses_the_slowest_so_far_or_a_first_estimate():
    assert bench_serve.next_config_fits(1000.0, None, None)
    assert bench_serve.next_config_fits(0.0, None, bench_serve.FIRST_CONFIG_ESTIMATE_S)
    assert not bench_serve.next_config_fits(1.0, None, bench_serve.FIRST_CONFIG_ESTIMATE_S)
    assert bench_serve.next_config_fits(300.0, 200.0, 500.0)
    assert not bench_serve.next_config_fits(301.0, 200.0, 500.0)


def test_budget_leaves_the_configurations_that_would_not_fit(tmp_path, monkeypatch, capsys):
    clock = [0.0]
    ran = []

    def fake_run(cmd, env=None, **kwargs):
        name = cmd[cmd.index("--one") + 1]
        ran.append(name)
        clock[0] += 200.0  # every configuration takes 200 s
        (tmp_path / "results" / f"{name}.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(bench_serve.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(bench_serve, "report", lambda results_dir: "TABLE " + ",".join(
        sorted(p.stem for p in results_dir.glob("*.json"))))
    argv = ["--work", str(tmp_path), "--budget", "500", "--configs", "bf16,builtin_w4,ours_w4"]
    assert run_main(monkeypatch, bench_serve, argv, fake_run) == 0
    assert ran == ["bf16", "builtin_w4"]  # 0 + 240 and 200 + 200 fit in 500 s; 400 + 200 does not
    out = capsys.readouterr().out
    assert "ours_w4 (round 1) and later runs left for another call" in out
    assert "TABLE bf16,builtin_w4" in out


def test_kept_results_are_announced_and_remeasure_runs_them_again(tmp_path, monkeypatch, capsys):
    """A second call for a configuration that already has a result used to reprint the old table without a
    word (2026-12-04): it now says so, and --remeasure measures it again."""
    ran = []

    def fake_run(cmd, env=None, **kwargs):
        name = cmd[cmd.index("--one") + 1]
        ran.append(name)
        (tmp_path / "results" / f"{name}.json").write_text('{"new": 1}')
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(bench_serve, "report", lambda results_dir: "TABLE")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "ours_w4.json").write_text('{"old": 1}')
    args = ["--work", str(tmp_path), "--configs", "ours_w4"]
    assert run_main(monkeypatch, bench_serve, args, fake_run) == 0 and ran == []
    assert "ours_w4: kept from an earlier call" in capsys.readouterr().out
    assert run_main(monkeypatch, bench_serve, args + ["--remeasure"], fake_run) == 0 and ran == ["ours_w4"]
    assert json.loads((tmp_path / "results" / "ours_w4.json").read_text())["new"] == 1


def test_rounds_alternate_the_order_and_the_table_reports_medians(tmp_path, monkeypatch, capsys):
    """--rounds 3 runs A B, B A, A B (the engine that starts first measured slower on the H200) and each figure is
    the median over rounds; greedy tokens come from round 1."""
    ran = []

    def fake_run(cmd, env=None, **kwargs):
        name, round_no = cmd[cmd.index("--one") + 1], int(cmd[cmd.index("--round") + 1])
        ran.append((name, round_no))
        speed = {"builtin_w4": 100.0, "ours_w4": 120.0}[name] * (1 + round_no) / 2  # 100, 150, 200 for builtin
        result = {"startup_s": 10.0 * round_no, "tok_s": {str(b): speed for b in bench_serve.BATCHES},
                  "greedy": [[round_no]]}
        bench_serve.result_path(tmp_path / "results", name, round_no).write_text(json.dumps(result))
        return subprocess.CompletedProcess(cmd, 0)

    argv = ["--work", str(tmp_path), "--rounds", "3", "--configs", "builtin_w4,ours_w4"]
    assert run_main(monkeypatch, bench_serve, argv, fake_run) == 0
    assert ran == [("builtin_w4", 1), ("ours_w4", 1), ("ours_w4", 2), ("builtin_w4", 2), ("builtin_w4", 3),
                   ("ours_w4", 3)]
    table = capsys.readouterr().out
    assert "| builtin_w4 | 3 | 20 | 150 (100, 150, 200) |" in table
    assert "| ours_w4 | 3 | 20 | 180 (120, 180, 240) |" in table
    assert "| ours_w4 / builtin_w4 | | | 1.20x |" in table
    assert "greedy agreement ours_w4 vs builtin_w4" in table  # round 1's tokens, [[1]] for both: 100%
    assert bench_serve.load_results(tmp_path / "results")["ours_w4"][0]["greedy"] == [[1]]
    # a single-round remeasure drops the older rounds rather than mixing them into its medians
    argv = ["--work", str(tmp_path), "--remeasure", "--configs", "ours_w4"]
    assert run_main(monkeypatch, bench_serve, argv, fake_run) == 0
    assert [p.name for p in sorted((tmp_path / "results").glob("ours_w4*"))] == ["ours_w4.json"]
