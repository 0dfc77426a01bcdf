"""Tuner benchmark: auto-round 0.16.1 and our SignRound on the same blocks, calibration tokens and seed.

Builds a Llama-3-8B-shaped model (hidden 4096, intermediate 14336, 32 heads, 8 KV heads; random bf16
weights, std 0.02) with ``--layers`` decoder blocks, then runs, in this one process:

1. auto-round 0.16.1 (``AutoRound(...).quantize()``, default recipe unless overridden), timing each block's
   ``compress_block`` (reference outputs + tuning + next inputs) and snapshotting its fake-quantized weights;
2. ours (``python -m vllm_autoround.quantize`` in-process) on exactly the tokens auto-round consumed;
3. one independent evaluation for both (and RTN): the Hugging Face model run twice, full precision and
   with the tool's dequantized weights; per block, the MSE between its output on the quantized chain and
   on the full-precision chain (the quantity both tools minimize), over all calibration samples.

Peak GPU memory is ``torch.cuda.max_memory_allocated`` over each tool's run, above what was allocated
when it began. ``--small`` shrinks
everything for a CPU smoke test; ``--model DIR`` compares on an existing (e.g. the trained toy) model with
the built-in calibration text and adds a held-out evaluation. Prints a table last; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm_autoround.quantize.evaluate import dequantized_weights  # noqa: E402
from vllm_autoround.quantize.signround import COMPILE_ENV  # noqa: E402

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 head_dim=128, vocab_size=4096, rope_theta=500000.0, max_position_embeddings=8192)
# SmolLM2-135M's block (the real model of docs/benchmarks.md, "Accuracy"), for random-weight timing
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
               vocab_size=4096, rope_theta=100000.0, max_position_embeddings=8192)
SHAPES = {"llama3_8b": LLAMA3_8B, "smollm2": SMOLLM2}
SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             vocab_size=512, rope_theta=10000.0, max_position_embeddings=512)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


_peak_baseline = 0  # bytes allocated when the current measurement began


def reset_peak() -> None:
    """Start a peak measurement. What is already allocated (an earlier tool's leftovers in this process) is
    the baseline that :func:`peak_gb` leaves out."""
    global _peak_baseline
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        _peak_baseline = torch.cuda.memory_allocated()


def peak_gb() -> float | None:
    """GiB allocated at the peak since :func:`reset_peak`, above what was allocated then (None off CUDA)."""
    if not torch.cuda.is_available():
        return None
    return round((torch.cuda.max_memory_allocated() - _peak_baseline) / 2**30, 2)


def build_model(path: Path, shape: dict, layers: int, dtype: torch.dtype, device: str) -> Path:
    """Random-weight Llama with a word-level tokenizer (``t<i>``, pad id 0 never used in the data)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(**shape, num_hidden_layers=layers, tie_word_embeddings=False, rms_norm_eps=1e-5,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.02)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, shape["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(path)
    del model
    return path


def run_autoround(model_dir: Path, tokens: torch.Tensor, a: argparse.Namespace, device: str,
                  layer_config: dict | None = None) -> dict:
    """auto-round on exactly ``tokens``; returns timings, peak memory and each block's fake-quantized weights."""
    from auto_round import AutoRound
    from auto_round.algorithms.composer import AlgorithmComposer

    timings: list[float] = []
    weights: dict[str, torch.Tensor] = {}
    original = AlgorithmComposer.compress_block

    def timed(self, block, *args, **kwargs):
        sync()
        t0 = time.perf_counter()
        result = original(self, block, *args, **kwargs)
        sync()
        timings.append(time.perf_counter() - t0)
        prefix = getattr(block, "global_name", f"model.layers.{len(timings) - 1}")
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                weights[f"{prefix}.{name}.weight"] = module.weight.detach().to("cpu", copy=True)
        return result

    AlgorithmComposer.compress_block = timed
    dataset = [{"input_ids": tokens[i : i + 1].clone(), "attention_mask": None} for i in range(tokens.shape[0])]
    reset_peak()
    t0 = time.perf_counter()
    try:
        ar = AutoRound(str(model_dir), scheme="W4A16", bits=a.bits, group_size=a.group_size, sym=True,
                       iters=a.iters, nsamples=a.nsamples, seqlen=a.seqlen, batch_size=a.batch_size,
                       dataset=dataset, seed=a.seed, device_map=0 if device == "cuda" else "cpu",
                       low_gpu_mem_usage=False, layer_config=layer_config,
                       # On a CPU that reports bf16 (avx512_bf16) auto-round would cast the model to bf16; ours
                       # tunes in float32 there, as auto-round did on CPUs without it. CUDA: its default (bf16).
                       amp=device == "cuda")
        seen: list[torch.Tensor] = []
        hook = ar.model.get_input_embeddings().register_forward_pre_hook(
            lambda m, args: seen.append(args[0].detach().cpu()))
        ar.quantize()
        hook.remove()
    finally:
        AlgorithmComposer.compress_block = original
    consumed = torch.cat(seen) if seen else torch.empty(0)
    sync()
    total = time.perf_counter() - t0
    result = {"block_seconds": [round(t, 2) for t in timings], "total_seconds": round(total, 2),
              "peak_gpu_gb": peak_gb(), "same_tokens": bool(torch.equal(consumed, tokens)), "weights": weights}
    del ar
    return result


def timed_quantize(out: Path, argv: list[str]) -> tuple[float, dict]:
    """Our quantizer in-process, writing ``out`` afresh: its wall seconds (GPU synced; peak memory reset
    before, read with :func:`peak_gb`) and its quantize_report.json."""
    from vllm_autoround.quantize.__main__ import build_parser
    from vllm_autoround.quantize.run import quantize

    shutil.rmtree(out, ignore_errors=True)
    reset_peak()
    t0 = time.perf_counter()
    quantize(build_parser().parse_args(["--output", str(out), *argv]))
    sync()
    return time.perf_counter() - t0, json.loads((out / "quantize_report.json").read_text())


def write_token_dataset(tokens: torch.Tensor, path: Path) -> Path:
    """``tokens`` as a jsonl ``--dataset`` of ``input_ids`` rows, which our quantizer uses exactly as given."""
    path.write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in tokens.tolist()))
    return path


def random_model_run(work: Path, shape: dict, layers: int, device: str, small: bool, token_seed: int
                     ) -> tuple[list[str], int, int]:
    """A random-weight model of ``shape`` and random calibration tokens under ``work``, sized as the default
    recipe (128 x 2048, batch 8) or, if ``small``, for a CPU smoke test: our quantizer's arguments for
    them, the sequence length and the batch size."""
    nsamples, seqlen, batch = (4, 32, 2) if small else (128, 2048, 8)
    model = build_model(work / "model", shape, layers, torch.bfloat16, device)
    tokens = torch.randint(3, shape["vocab_size"], (nsamples, seqlen),
                           generator=torch.Generator().manual_seed(token_seed))
    data = write_token_dataset(tokens, work / "tokens.jsonl")
    args = ["--model", str(model), "--dataset", str(data), "--device", device, "--nsamples", str(nsamples),
            "--seqlen", str(seqlen), "--batch_size", str(batch)]
    return args, seqlen, batch


def run_ours(model_dir: Path, tokens: torch.Tensor, a: argparse.Namespace, device: str, work: Path,
             *extra: str) -> dict:
    data = write_token_dataset(tokens, work / "tokens.jsonl")
    out = work / "ours"
    total, report = timed_quantize(out, [
        "--model", str(model_dir), "--dataset", str(data), "--device", device,
        "--bits", str(a.bits), "--group_size", str(a.group_size), "--iters", str(a.iters),
        "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen), "--batch_size", str(a.batch_size),
        "--seed", str(a.seed), *extra])
    return {"block_seconds": [b["seconds"] for b in report["blocks"]],
            "tune_seconds": [b.get("tune_seconds") for b in report["blocks"]],
            "loss_best": [b["loss_best"] for b in report["blocks"]],
            "total_seconds": round(total, 2), "peak_gpu_gb": peak_gb(), "compile": report["compile"],
            "weights": dequantized_weights(out)}


def rtn_weights(model_dir: Path, names: list[str], a: argparse.Namespace) -> dict[str, torch.Tensor]:
    from vllm_autoround.format.schema import LayerScheme
    from vllm_autoround.quantize.model_files import ModelFiles
    from vllm_autoround.quantize.qdq import fake_quantize

    files = ModelFiles(model_dir)
    scheme = LayerScheme(a.bits, a.group_size, True)
    return {n: fake_quantize(files.tensor(n).float(), scheme) for n in names}


@torch.no_grad()
def evaluate(model_dir: Path, tokens: torch.Tensor, tools: dict[str, dict[str, torch.Tensor]], device: str,
             dtype: torch.dtype, batch: int) -> dict[str, list[float]]:
    """Per block: mean squared difference of its output on the tool's quantized chain vs the FP chain."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
    layers = model.model.layers
    fp_state = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("model.layers.")}

    def layer_outputs(ids: torch.Tensor) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        hooks = [layer.register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
                 for layer in layers]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            model.model(input_ids=ids, use_cache=False)
        for h in hooks:
            h.remove()
        return seen

    reference = [layer_outputs(tokens[s : s + batch].to(device)) for s in range(0, tokens.shape[0], batch)]
    results = {}
    for tool, weights in tools.items():
        model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=False)
        sq = [0.0] * len(layers)
        count = 0
        for j, s in enumerate(range(0, tokens.shape[0], batch)):
            outs = layer_outputs(tokens[s : s + batch].to(device))
            for i, o in enumerate(outs):
                sq[i] += float((o.float() - reference[j][i].float()).square().sum())
            count += outs[0].numel()
        results[tool] = [x / count for x in sq]
        model.load_state_dict(fp_state, strict=False)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny shapes and recipe, for a CPU smoke test")
    p.add_argument("--layers", type=int, default=2, help="decoder blocks (block 0 pays compile warm-up)")
    p.add_argument("--shape", choices=SHAPES, default="llama3_8b", help="the random-weight model's block shape")
    p.add_argument("--iters", type=int)
    p.add_argument("--nsamples", type=int)
    p.add_argument("--seqlen", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group_size", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip_autoround", action="store_true")
    p.add_argument("--no_low_mem_run", dest="low_mem_run", action="store_false",
                   help="skip the extra run of ours with --low_gpu_mem_usage")
    p.add_argument("--deadline", type=float, default=420, help="skip optional runs after this many seconds")
    p.add_argument("--workdir", help="where to build the model (default: a temp dir)")
    p.add_argument("--model", help="use this model directory (built-in calibration text, plus a held-out "
                                   "evaluation) instead of building a random-weight one")
    p.add_argument("--out", help="write the results here as JSON")
    a = p.parse_args(argv)
    recipe = dict(iters=10, nsamples=8, seqlen=64, batch_size=4) if a.small else \
        dict(iters=200, nsamples=128, seqlen=2048, batch_size=8)
    for key, value in recipe.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    device = "cuda" if torch.cuda.is_available() and not a.small else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_tuner."))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    t0 = time.perf_counter()
    held_out = None
    if a.model:
        from vllm_autoround.quantize.calibration import calibration_tokens, load_tokenizer

        model_dir, tok = Path(a.model), load_tokenizer(a.model)
        shape = json.loads((model_dir / "config.json").read_text())
        tokens = calibration_tokens(tok, None, a.nsamples, a.seqlen, seed=42)
        held_out = calibration_tokens(tok, None, a.nsamples, a.seqlen, seed=7)
    else:
        shape = SMALL if a.small else SHAPES[a.shape]
        model_dir = build_model(work / "model", shape, a.layers, dtype, device)
        tokens = torch.randint(3, shape["vocab_size"], (a.nsamples, a.seqlen),
                               generator=torch.Generator().manual_seed(1))
        print(f"model built in {time.perf_counter() - t0:.1f}s: {a.layers} blocks, {shape}", flush=True)
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "layers": a.layers if not a.model else shape.get("num_hidden_layers"),
            "shape": {k: shape[k] for k in LLAMA3_8B if k in shape}, "seed": a.seed,
            "recipe": recipe | {k: getattr(a, k) for k in recipe},
            "bits": a.bits, "group_size": a.group_size}
    runs = {}
    if not a.skip_autoround:
        runs["auto-round 0.16.1"] = run_autoround(model_dir, tokens, a, device)
        print("auto-round done:", {k: v for k, v in runs["auto-round 0.16.1"].items() if k != "weights"}, flush=True)
    try:
        runs["vllm-autoround"] = run_ours(model_dir, tokens, a, device, work)
    except Exception as exc:  # a failed whole-block compile must not cost the measurement: retry lean
        if device != "cuda":
            raise
        import traceback

        traceback.print_exc()
        print(f"ours failed with the default compile mode ({exc!r}); retrying with {COMPILE_ENV}=quant")
        os.environ[COMPILE_ENV] = "quant"
        runs["vllm-autoround"] = run_ours(model_dir, tokens, a, device, work)
    print("ours done:", {k: v for k, v in runs["vllm-autoround"].items() if k != "weights"}, flush=True)
    if device == "cuda" and a.low_mem_run and time.perf_counter() - t0 < a.deadline:
        try:
            runs["ours --low_gpu_mem_usage"] = run_ours(model_dir, tokens, a, device, work, "--low_gpu_mem_usage")
        except Exception as exc:
            import traceback

            traceback.print_exc()
            print(f"low_gpu_mem_usage run failed: {exc!r}")
        else:
            print("ours low-mem done:", {k: v for k, v in runs["ours --low_gpu_mem_usage"].items()
                                         if k != "weights"}, flush=True)
    names = sorted(runs["vllm-autoround"]["weights"])
    tools = {"rtn": rtn_weights(model_dir, names, a)} | {k: v.pop("weights") for k, v in runs.items()}
    losses = evaluate(model_dir, tokens, tools, device, dtype, a.batch_size)
    summary = {"info": info, "runs": runs, "eval_mse": losses}
    if held_out is not None:
        summary["eval_mse_held_out"] = evaluate(model_dir, held_out, tools, device, dtype, a.batch_size)
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=2))
    print("\n" + json.dumps(info))
    print(f"{'tool':<26} {'s/block (each)':<22} {'total s':>8} {'peak GB':>8}  eval MSE per block")
    for tool in tools:
        run = runs.get(tool, {})
        secs = ", ".join(f"{s:.1f}" for s in run.get("block_seconds", [])) or "-"
        peak = run.get("peak_gpu_gb")
        print(f"{tool:<26} {secs:<22} {run.get('total_seconds', float('nan')):>8.1f} "
              f"{peak if peak is not None else '-':>8}  " + ", ".join(f"{x:.4e}" for x in losses[tool])
              + ("  held-out: " + ", ".join(f"{x:.4e}" for x in summary["eval_mse_held_out"][tool])
                 if held_out is not None else ""))
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
