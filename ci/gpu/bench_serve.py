"""End-to-end decode throughput on the GPU: our plugin vs vLLM's built-in loader vs bf16 (issue 5).

One Llama-3-8B-shaped model with 16 decoder layers and random bf16 weights (hidden 4096, intermediate
14336, 32 heads, 8 KV heads, vocab 32000), quantized with our RTN; each configuration runs in its own
process through vLLM's offline engine with its defaults (torch.compile, CUDA graphs).

    python ci/gpu/bench_serve.py --work /tmp/bench_serve --configs bf16,builtin_w4,ours_w4,ours_w3,ours_w2

Results accumulate in WORK/results/*.json, so the configurations can be split over several calls;
every call prints the table of what has been measured so far. A configuration with a result is kept (and
said so) unless ``--remeasure`` is given. ``--budget SECONDS`` stops before a
configuration that would not finish in time (judged by the slowest one so far), so that a call under a
wall-clock limit still prints its table and copies its results to $OUT.

``--tune-cache FILE`` starts from the kernel tuner's choices saved by an earlier run (every call that has $OUT
writes them to $OUT/tune_cache.json): on a fresh machine the tuner otherwise spends about a minute of device
time timing candidates before our engine serves. Use it only with the same kernel code.

Each configuration's process logs vLLM at INFO to WORK/logs/NAME[.roundR].log (copied to $OUT); the console
gets its timings, errors and startup phases. vLLM's JIT monitor runs verbose, and the table counts the kernels
it saw compiled while serving (after the engine's warm-up), per configuration and round.

``--rounds R`` measures every configuration R times, the order reversed in every other round (A B, B A, …),
and the table reports the median over rounds. Why: on the H200 the same engine measured up to 37% apart
depending on whether it started first or second in a call (2026-12-04, seventh session), so one pass per
configuration can show an order effect as a loader's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BATCHES = (1, 16, 64, 256)
PROMPT_LEN, GEN_LEN = 128, 256
REPEATS = 3  # decode timings per batch size; the median is reported
AGREE_PROMPTS, AGREE_TOKENS = 8, 64
CONFIGS = {  # name: (checkpoint, --quantization)
    "bf16": ("bf16", None),
    "builtin_w4": ("w4g128", None),
    "ours_w4": ("w4g128", "auto_round"),
    "ours_w3": ("w3g64", "auto_round"),
    "ours_w2": ("w2g64", "auto_round"),
    # a control: the built-in loader again, with Machete disabled so that it runs Marlin (CONFIG_ENV)
    "builtin_marlin_w4": ("w4g128", None),
}
# extra environment per configuration (the subprocess's)
CONFIG_ENV = {"builtin_marlin_w4": {"VLLM_DISABLED_KERNELS": "MacheteLinearKernel,AllSparkLinearKernel"}}
# vLLM's JIT monitor (verbose: one line per event): a kernel compiled after the engine's warm-up, i.e. while serving
JIT_EVENT = re.compile(r"JIT compilation during inference: (\w+)")
# the lines of a configuration's log (vLLM at INFO) echoed to the console; the whole log goes to WORK/logs and $OUT
ECHOED = re.compile(r"tok/s|JIT|Traceback|Error|init engine|torch\.compile took|Graph capturing finished|"
                    r"load failure|Directly load|Using \w+LinearKernel|vllm_autoround|auto_round")
CHECKPOINTS = {"w4g128": ("4", "128"), "w3g64": ("3", "64"), "w2g64": ("2", "64")}
# the pair whose greedy agreement issue 5 asks for (ours_w4, builtin_w4), and a control pair of two vLLM kernels
# on the same checkpoint (builtin_marlin_w4, builtin_w4): the agreement two valid kernels reach on this model.
# Whichever of a pair runs second also scores the other's tokens (teacher-forced).
PAIRS = (("ours_w4", "builtin_w4"), ("builtin_marlin_w4", "builtin_w4"))
PARTNERS = {name: tuple(b if a == name else a for a, b in PAIRS if name in (a, b)) for pair in PAIRS for name in pair}


def build_model(path: Path, layers: int = 16) -> None:
    """Random bf16 weights in HF Llama layout; lm_head std 0.1 so that greedy choices are not near-ties."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    if (path / "config.json").exists():
        return
    path.mkdir(parents=True, exist_ok=True)
    hidden, inter, heads, kv, vocab, head_dim = 4096, 14336, 32, 8, 32000, 128
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=1, torch_dtype="bfloat16")
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, std=0.02):
        return (torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32) * std).to(torch.bfloat16).cpu()

    shapes = {"self_attn.q_proj": (heads * head_dim, hidden), "self_attn.k_proj": (kv * head_dim, hidden),
              "self_attn.v_proj": (kv * head_dim, hidden), "self_attn.o_proj": (hidden, heads * head_dim),
              "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
    weight_map = {}
    for i in range(layers):
        tensors = {f"model.layers.{i}.{name}.weight": rand(*shape) for name, shape in shapes.items()}
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{norm}.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        file = f"model-{i:05d}.safetensors"
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
    rest = {"model.embed_tokens.weight": rand(vocab, hidden, std=1.0), "lm_head.weight": rand(vocab, hidden, std=0.1),
            "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    save_file(rest, str(path / "model-rest.safetensors"), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(rest, "model-rest.safetensors"))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(path)
    vocab_map = {f"t{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(vocab_map, unk_token="t2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t0", eos_token="t1", unk_token="t2").save_pretrained(path)


def quantize(work: Path, configs: list[str]) -> None:
    """The checkpoints that ``configs`` serve (RTN is enough for speed), each made once."""
    for name, (bits, group) in CHECKPOINTS.items():
        if (work / name / "config.json").exists() or all(CONFIGS[c][0] != name for c in configs):
            continue
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "vllm_autoround.quantize", "--model", str(work / "bf16"),
                        "--output", str(work / name), "--bits", bits, "--group_size", group, "--iters", "0",
                        "--device", "cuda"], check=True)
        print(f"quantized {name} in {time.monotonic() - start:.0f} s", flush=True)


def prompts(count: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(3, 32000) for _ in range(PROMPT_LEN)]} for _ in range(count)]


def config_names(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``--configs`` as a list, or a usage error naming the unknown ones."""
    configs = text.split(",")
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; choose from {list(CONFIGS)}")
    return configs


def make_llm(work: Path, name: str, **extra):
    """The offline engine of one configuration, with vLLM's defaults except the captured batch sizes. Ours is
    checked to run this plugin: else vLLM's own INC loader would serve "ours" without a word (2026-12-04)."""
    from vllm_autoround.serving.plugin import checked_llm

    ckpt, quantization = CONFIGS[name]
    # CUDA graphs captured for exactly the batch sizes measured: vLLM's defaults otherwise, faster to start.
    return checked_llm(model=str(work / ckpt), quantization=quantization, dtype="bfloat16", max_model_len=1024,
                       gpu_memory_utilization=0.85, seed=0, max_num_seqs=256,
                       compilation_config={"cudagraph_capture_sizes": list(BATCHES) + [AGREE_PROMPTS, 4]},
                       jit_monitor_verbose=True, **extra)


def run_one(work: Path, name: str) -> dict:
    """Measure one configuration (runs in its own process so GPU memory starts empty)."""
    from vllm import SamplingParams

    start = time.monotonic()
    llm = make_llm(work, name)
    result: dict = {"name": name, "startup_s": time.monotonic() - start, "tok_s": {}}
    greedy = SamplingParams(max_tokens=GEN_LEN, ignore_eos=True, temperature=0.0)
    one = SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0)
    llm.generate(prompts(4, 99), greedy, use_tqdm=False)  # warm-up
    for batch in BATCHES:
        batch_prompts = prompts(batch, batch)
        # Untimed first: the prefill of a new batch size used to meet M buckets our kernel autotuner had not
        # timed (seconds); inside the timed 1-token run that made single timings 1.6-3x too high or negative
        # (2026-12-04, batch 16). The plugin now prepares every bucket at startup (kernels/warmup.py); this run
        # stays so that no first use of anything, ours or vLLM's, lands in a timing.
        llm.generate(batch_prompts, one, use_tqdm=False)
        llm.generate(batch_prompts, SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.0), use_tqdm=False)
        runs = []
        for _ in range(REPEATS):  # batch 1 varies by up to 20% between single runs on the H100
            t0 = time.perf_counter()
            llm.generate(batch_prompts, one, use_tqdm=False)
            t1 = time.perf_counter()
            llm.generate(batch_prompts, greedy, use_tqdm=False)
            t2 = time.perf_counter()
            runs.append(batch * (GEN_LEN - 1) / ((t2 - t1) - (t1 - t0)))  # prefill + first token subtracted
        result["tok_s"][str(batch)] = statistics.median(runs)
        result.setdefault("tok_s_runs", {})[str(batch)] = runs
        state = gpu_state()
        result.setdefault("gpu_state", {})[str(batch)] = state
        print(f"{name} batch {batch}: {result['tok_s'][str(batch)]:.0f} tok/s (median of "
              + ", ".join(f"{r:.0f}" for r in runs) + f"); GPU after it: {state}", flush=True)
    agree_prompts = prompts(AGREE_PROMPTS, 7)
    outs = llm.generate(agree_prompts, SamplingParams(max_tokens=AGREE_TOKENS, ignore_eos=True, temperature=0.0),
                        use_tqdm=False)
    result["greedy"] = [list(o.outputs[0].token_ids) for o in outs]
    result["forced"] = []
    for partner in PARTNERS.get(name, ()):
        path = result_path(work / "results", partner)
        if path.exists():
            theirs = json.loads(path.read_text())["greedy"]
            result["forced"].append({"partner": partner, **score_partner(
                llm, [p["prompt_token_ids"] for p in agree_prompts], theirs)})
    return result


def score_partner(llm, prompt_ids: list[list[int]], theirs: list[list[int]]) -> dict:
    """This engine's own greedy choice at every position of the partner's greedy sequences (teacher-forced:
    both engines see the same context), so that one early near-tie does not decide the whole sequence."""
    from vllm import SamplingParams

    inputs = [{"prompt_token_ids": p + t} for p, t in zip(prompt_ids, theirs, strict=True)]
    outs = llm.generate(inputs, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1), use_tqdm=False)
    return forced_agreement([o.prompt_logprobs for o in outs], [len(p) for p in prompt_ids], theirs)


def forced_agreement(prompt_logprobs: list[list], prompt_lens: list[int], theirs: list[list[int]]) -> dict:
    """From vLLM prompt log-probabilities over ``prompt + theirs``: the share of the partner's tokens that are
    this engine's top choice too, and at each disagreement the log-probability gap between this engine's top
    token and the partner's (near 0: a near-tie that rounding can flip)."""
    matches, total, gaps = 0, 0, []
    for seq, (entries, prompt_len, tokens) in enumerate(zip(prompt_logprobs, prompt_lens, theirs, strict=True)):
        for j, token in enumerate(tokens):
            entry = entries[prompt_len + j] if entries is not None and prompt_len + j < len(entries) else None
            if not entry or token not in entry:
                raise RuntimeError(f"no prompt log-probability for prompt {seq}, generated position {j}: "
                                   "was the prefix cache read?")
            total += 1
            if entry[token].rank == 1:
                matches += 1
            else:
                gaps.append(max(lp.logprob for lp in entry.values()) - entry[token].logprob)
    return {"share": matches / total, "tokens": total, "gaps": gaps}


def describe_forced(name: str, partner: str, forced: dict) -> str:
    """One line for a teacher-forced score (bench_serve's table and greedy_agreement's report)."""
    gaps = forced["gaps"]
    return (f"teacher-forced: {name}'s top choice equals {partner}'s greedy token at {forced['share']:.1%} of "
            f"{forced['tokens']} positions" + (f"; log-prob gaps where not: max {max(gaps):.3f}, median "
                                               f"{statistics.median(gaps):.3f}" if gaps else ""))


GPU_STATE_FIELDS = ("clocks.sm", "clocks.mem", "power.draw", "temperature.gpu", "pstate")


def gpu_state() -> dict[str, str] | None:
    """nvidia-smi's clocks, power, temperature and performance state right after a timing: the same engine measured
    up to 37% apart by start order (2026-12-04), and these say whether the GPU or the host changed."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(GPU_STATE_FIELDS)}", "--format=csv,noheader",
                              "--id=0"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    values = [v.strip() for v in out.strip().split(",")]
    return dict(zip(GPU_STATE_FIELDS, values, strict=True)) if len(values) == len(GPU_STATE_FIELDS) else None


def first_divergences(a: list[list[int]], b: list[list[int]]) -> list[int]:
    """For each prompt, how many greedy tokens match before the two sequences first differ."""
    return [next((i for i, (p, q) in enumerate(zip(x, y, strict=True)) if p != q), len(x))
            for x, y in zip(a, b, strict=True)]


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of greedy tokens that match before the first divergence of each prompt."""
    return sum(first_divergences(a, b)) / sum(len(x) for x in a)


def result_path(results_dir: Path, name: str, round_no: int = 1) -> Path:
    """Round 1 keeps the plain name, so results of calls made before ``--rounds`` still read."""
    return results_dir / (f"{name}.json" if round_no == 1 else f"{name}.round{round_no}.json")


def name_and_round(path: Path) -> tuple[str, int]:
    """The inverse of :func:`result_path`."""
    name, _, round_no = path.stem.partition(".round")
    return name, int(round_no or 1)


def load_results(results_dir: Path) -> dict[str, list[dict]]:
    """Every round's result per configuration, round 1 first."""
    grouped: dict[str, list[tuple[int, dict]]] = {}
    for p in results_dir.glob("*.json"):
        name, round_no = name_and_round(p)
        grouped.setdefault(name, []).append((round_no, json.loads(p.read_text())))
    return {name: [r for _, r in sorted(rounds, key=lambda x: x[0])] for name, rounds in grouped.items()}


def median_tok_s(rounds: list[dict]) -> dict[str, float]:
    return {str(b): statistics.median(r["tok_s"][str(b)] for r in rounds) for b in BATCHES}


def report(results_dir: Path) -> str:
    grouped = load_results(results_dir)
    speeds = {name: median_tok_s(rounds) for name, rounds in grouped.items()}
    results = {name: rounds[0] for name, rounds in grouped.items()}  # greedy tokens and scores: round 1
    lines = ["| config | rounds | startup s | " + " | ".join(f"batch {b} tok/s" for b in BATCHES) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in BATCHES) + " |"]
    for name in CONFIGS:
        if name in grouped:
            rounds = grouped[name]
            per_round = (" (" + ", ".join(f"{r['tok_s'][str(b)]:.0f}" for r in rounds) + ")" if len(rounds) > 1
                         else "" for b in BATCHES)
            lines.append(f"| {name} | {len(rounds)} | {statistics.median(r['startup_s'] for r in rounds):.0f} | "
                         + " | ".join(f"{speeds[name][str(b)]:.0f}{pr}" for b, pr in zip(BATCHES, per_round,
                                                                                         strict=True)) + " |")
    for ours in ("ours_w4", "ours_w3", "ours_w2"):
        for anchor in ("builtin_w4", "bf16"):
            if ours in speeds and anchor in speeds:
                ratios = [speeds[ours][str(b)] / speeds[anchor][str(b)] for b in BATCHES]
                lines.append(f"| {ours} / {anchor} | | | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
    for a, b in PAIRS:
        if a in results and b in results:
            share = agreement(results[a]["greedy"], results[b]["greedy"])
            lines.append(f"\ngreedy agreement {a} vs {b} (tokens before first divergence, "
                         f"{AGREE_PROMPTS} prompts x {AGREE_TOKENS}): {share:.1%}")
    jit = {name: [r["jit_during_inference"] for r in rounds if "jit_during_inference" in r]
           for name, rounds in grouped.items()}
    for name, counts in jit.items():
        if counts:
            lines.append(f"JIT compilations while serving (vLLM's JIT monitor), {name}: " + "; ".join(
                f"round {i}: " + (", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "none")
                for i, c in enumerate(counts, 1)))
    for name in PARTNERS:
        for forced in forced_scores(results.get(name, {})):
            lines.append(describe_forced(name, forced["partner"], forced))
    return "\n".join(lines)


def forced_scores(result: dict) -> list[dict]:
    """A result's teacher-forced scores, one per partner (results before the control pair held one dict)."""
    forced = result.get("forced") or []
    return [forced] if isinstance(forced, dict) else forced


FIRST_CONFIG_ESTIMATE_S = 240.0  # startup, warm-up and timings of one configuration on an H100/H200


def next_config_fits(elapsed: float, slowest: float | None, budget: float | None) -> bool:
    """Whether another configuration is expected to finish within ``budget`` seconds of the call's start."""
    if budget is None:
        return True
    return elapsed + (slowest if slowest is not None else FIRST_CONFIG_ESTIMATE_S) <= budget


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/bench_serve")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--budget", type=float, help="seconds; configurations that would not fit are left for "
                                                     "a later call")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure the listed configurations again even where WORK/results has them")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each configuration this many times, alternating the order; report medians")
    parser.add_argument("--tune-cache", type=Path, help="a tune_cache.json saved by an earlier run of this code")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    work = Path(args.work)
    results_dir = work / "results"
    if args.one:
        result = run_one(work, args.one)
        result_path(results_dir, args.one, args.round).write_text(json.dumps(result))
        return 0
    configs = config_names(parser, args.configs)
    if args.tune_cache is not None:
        seed_tune_cache_or_exit(parser, args.tune_cache)
    results_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    build_model(work / "bf16")
    print(f"model ready in {time.monotonic() - start:.0f} s", flush=True)
    quantize(work, configs)
    if args.remeasure:  # rounds beyond this call's would otherwise join its medians
        for name in configs:
            for old in results_dir.glob(f"{name}.round*.json"):
                if name_and_round(old)[1] > args.rounds:
                    old.unlink()
    slowest = None
    runs = [(name, r) for r in range(1, args.rounds + 1) for name in (configs if r % 2 else configs[::-1])]
    for name, round_no in runs:
        path = result_path(results_dir, name, round_no)
        if path.exists():
            if not args.remeasure:
                print(f"{name}: kept from an earlier call ({path}); --remeasure measures it again", flush=True)
                continue
            path.unlink()
        if not next_config_fits(time.monotonic() - start, slowest, args.budget):
            print(f"budget of {args.budget:.0f} s reached: {name} (round {round_no}) and later runs left for "
                  "another call", flush=True)
            break
        began = time.monotonic()
        log_path = work / "logs" / f"{path.stem}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.run([sys.executable, __file__, "--work", str(work), "--one", name, "--round",
                                   str(round_no)], env=config_env(name), stdout=log, stderr=subprocess.STDOUT)
        slowest = max(slowest or 0.0, time.monotonic() - began)
        record_jit_events(path, echo_log(log_path))
        if proc.returncode != 0:
            print(f"{name}: failed with exit code {proc.returncode}; log {log_path}", flush=True)
    table = report(results_dir)
    print(table)
    out = os.environ.get("OUT")
    if out:
        Path(out, "bench_serve.md").write_text(table + "\n")
        for p in results_dir.glob("*.json"):
            Path(out, f"serve_{p.name}").write_text(p.read_text())
        for p in (work / "logs").glob("*.log"):
            shutil.copyfile(p, Path(out, f"serve_{p.name}"))
        save_tune_cache(Path(out))
    return 0


def config_env(name: str) -> dict[str, str]:
    """The environment of one configuration's engine process: vLLM at INFO (its startup phases, the kernel it
    chose, our plugin's warm-up), plus its CONFIG_ENV."""
    return {**os.environ, "VLLM_LOGGING_LEVEL": "INFO", **CONFIG_ENV.get(name, {})}


def echo_log(log_path: Path) -> dict[str, int]:
    """Print a configuration's log lines that matter (:data:`ECHOED`); the kernels vLLM's JIT monitor saw compiled
    while serving, with their counts."""
    events: dict[str, int] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if ECHOED.search(line):
            print(line, flush=True)
        found = JIT_EVENT.search(line)
        if found:
            events[found.group(1)] = events.get(found.group(1), 0) + 1
    return events


def record_jit_events(path: Path, events: dict[str, int]) -> None:
    """Add the JIT monitor's count to a configuration's result (a run that failed wrote none)."""
    if path.exists():
        result = json.loads(path.read_text())
        result["jit_during_inference"] = events
        path.write_text(json.dumps(result))


def seed_tune_cache_or_exit(parser: argparse.ArgumentParser, path: Path) -> None:
    """``--tune-cache``: seed the tuner, or stop with an error that names the file."""
    try:
        print(f"kernel tuning choices from {path} -> {seed_tune_cache(path)}", flush=True)
    except (OSError, ValueError) as exc:
        parser.error(f"--tune-cache {path}: {exc}")


def seed_tune_cache(path: Path) -> Path:
    """Copy an earlier run's tuner choices to where this code's tuner reads them (kernels.tuning)."""
    from vllm_autoround.kernels.tuning import default_cache_path, read_choices

    read_choices(path)  # the tuner's own reader: refuse here what it would ignore later
    target = default_cache_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return target


def save_tune_cache(out: Path) -> Path | None:
    """The tuner's choices of this run, for a later ``--tune-cache`` (None when the tuner saved none)."""
    from vllm_autoround.kernels.tuning import default_cache_path

    source = default_cache_path()
    if not source.exists():
        return None
    target = out / "tune_cache.json"
    shutil.copyfile(source, target)
    return target


if __name__ == "__main__":
    sys.exit(main())
