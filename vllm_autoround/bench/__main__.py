"""Load test, concurrency sweep, perplexity and comparison of OpenAI-compatible endpoints.
Run with --help on each subcommand; docs/bench.md has examples.

Exit status: 0 when something was measured, 1 when nothing was (unreachable server, every request
failed), 2 for bad arguments or input files. Results are written even when the run ends early.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import msgspec

from .client import Endpoint, RequestFailed, RequestOptions
from .lengths import LengthSpec
from .load import Budget
from .perplexity import APIS, BUILTIN_TEXTS
from .runner import LoadConfig, PerplexityConfig, run_bench, write_comparison
from .schema import BenchResult, decode

HARD_STOP_GRACE_S = 60.0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def _rate_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers (inf allowed)") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: rates must be > 0")
    return values


def _length(text: str) -> LengthSpec:
    try:
        return LengthSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_object(text: str) -> dict:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"--extra-body: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--extra-body: must be a JSON object")
    return value


def _add_common(p: argparse.ArgumentParser, multi_endpoint: bool = False) -> None:
    g = p.add_argument_group("endpoint")
    if multi_endpoint:
        g.add_argument("--base-url", action="append", default=[],
                       help="an endpoint to compare; give it twice (http://HOST:PORT or .../v1)")
        g.add_argument("--model", action="append", default=[],
                       help="served model name per --base-url (default: the first of /v1/models)")
        g.add_argument("--label", action="append", default=[], help="label per side in tables and plots")
    else:
        g.add_argument("--base-url", required=True, help="http://HOST:PORT or http://HOST:PORT/v1")
        g.add_argument("--model", help="served model name (default: the first of /v1/models)")
        g.add_argument("--label", help="name in reports (default: the model name)")
    g.add_argument("--tokenizer", default="auto",
                   help="auto (server /tokenize if it has one), server, none, or a local HF tokenizer path")
    o = p.add_argument_group("bounds and output")
    o.add_argument("--max-duration", type=float, default=3600.0,
                   help="global deadline in seconds for the whole invocation; 0 = none (default 3600)")
    o.add_argument("--request-timeout", type=float, default=120.0, help="per-request limit in seconds")
    o.add_argument("--out", required=True, help="directory for result.json, report.md and PNGs")
    o.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def _add_load(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load")
    g.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    g.add_argument("--concurrency", type=_int_list,
                   help="requests in flight, or a comma list for a sweep (default 8; with --request-rate: no cap)")
    g.add_argument("--request-rate", type=_rate_list,
                   help="Poisson arrivals in requests/s, or a comma list for a sweep")
    g.add_argument("--num-prompts", type=int, default=64, help="requests per run point (default 64)")
    g.add_argument("--input-len", type=_length, default=LengthSpec.parse("256"),
                   help="N | uniform:LO,HI | normal:MEAN,STD | exponential:MEAN (tokens; words without a "
                        "tokenizer or with --endpoint chat)")
    g.add_argument("--output-len", type=_length, default=LengthSpec.parse("64"), help="same forms as --input-len")
    g.add_argument("--prompts", help="prompt file: .jsonl ({'prompt': text or ids, 'output_len': N}) or text "
                                     "(paragraphs); default synthetic")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--warmup", type=int, default=1, help="unrecorded requests before the first point")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--no-ignore-eos", action="store_true",
                   help="do not send vLLM's ignore_eos (outputs may then stop before --output-len)")
    g.add_argument("--extra-body", type=_json_object, default={}, help="JSON merged into every request body")


def _add_ppl(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("perplexity")
    g.add_argument("--ppl-text", required=required,
                   help="UTF-8 text file to score, 'builtin' (the bundled CPython docs prose) or 'heldout' (the "
                        "Brown corpus genre the quantizer's default calibration leaves out)")
    g.add_argument("--ppl-window", type=int,
                   help="tokens per window (characters without a tokenizer); default min(512, max_model_len-1)")
    g.add_argument("--ppl-stride", type=int, help="tokens between window starts (default: the window)")
    g.add_argument("--ppl-max-windows", type=int, default=64, help="0 = the whole text (default 64)")
    g.add_argument("--ppl-api", choices=APIS, default="auto",
                   help="vLLM prompt_logprobs, OpenAI echo+logprobs, or auto (try the first, fall back)")
    g.add_argument("--ppl-concurrency", type=int, default=4)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-autoround-bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load", aliases=["sweep"], help="throughput and latency (a comma list sweeps)")
    _add_common(p)
    _add_load(p)
    _add_ppl(p, required=False)
    p = sub.add_parser("ppl", help="perplexity from prompt logprobs")
    _add_common(p)
    _add_ppl(p, required=True)
    p = sub.add_parser("compare", help="two result files, or two endpoints measured the same way")
    p.add_argument("results", nargs="*", help="two result.json files (omit to measure two --base-url)")
    _add_common(p, multi_endpoint=True)
    _add_load(p)
    _add_ppl(p, required=False)
    p.add_argument("--no-load", action="store_true", help="endpoints: perplexity only")
    return parser


def _load_config(args) -> LoadConfig:
    rates = [None if r == float("inf") else r for r in args.request_rate or [None]]
    concurrency = args.concurrency or ([None] if args.request_rate else [8])
    if len(rates) > 1 and len(concurrency) > 1:
        raise ValueError("sweep either --concurrency or --request-rate, not both")
    points = [(c, r) for c in concurrency for r in rates]
    if args.num_prompts < 1:
        raise ValueError("--num-prompts must be >= 1")
    options = RequestOptions(endpoint_kind=args.endpoint, temperature=args.temperature,
                             ignore_eos=not args.no_ignore_eos, extra_body=args.extra_body)
    return LoadConfig(input_len=args.input_len, output_len=args.output_len, num_prompts=args.num_prompts,
                      points=points, prompts_file=args.prompts, options=options, seed=args.seed,
                      request_timeout=args.request_timeout, warmup=max(0, args.warmup), tokenizer=args.tokenizer)


def _ppl_config(args) -> PerplexityConfig | None:
    if not args.ppl_text:
        return None
    if args.ppl_text not in BUILTIN_TEXTS and not Path(args.ppl_text).is_file():
        raise ValueError(f"--ppl-text {args.ppl_text}: no such file")
    return PerplexityConfig(text=args.ppl_text, window=args.ppl_window, stride=args.ppl_stride,
                            max_windows=args.ppl_max_windows or None, api=args.ppl_api,
                            concurrency=max(1, args.ppl_concurrency), request_timeout=args.request_timeout,
                            tokenizer=args.tokenizer)


def _measured(result: BenchResult) -> bool:
    return any(p.summary.completed for p in result.load) or bool(
        result.perplexity and result.perplexity.perplexity is not None)


async def _with_stop_signal(budget: Budget, coro):
    """First Ctrl-C: stop measuring and write what was measured. Second: the usual KeyboardInterrupt."""
    loop = asyncio.get_running_loop()

    def first_interrupt() -> None:
        print("stopping: writing partial results (Ctrl-C again to abort)", file=sys.stderr)
        budget.stop.set()
        loop.remove_signal_handler(signal.SIGINT)

    try:
        loop.add_signal_handler(signal.SIGINT, first_interrupt)
    except (NotImplementedError, RuntimeError):  # not the main thread / platform without it
        pass
    try:
        return await coro
    finally:
        try:
            loop.remove_signal_handler(signal.SIGINT)
        except (NotImplementedError, RuntimeError):
            pass


def _print_summary(result: BenchResult, out: Path) -> None:
    for p in result.load:
        m = p.summary
        ttft = f"{m.ttft.p50 * 1e3:.1f} ms" if m.ttft else "-"
        tpot = f"{m.tpot.p50 * 1e3:.1f} ms" if m.tpot else "-"
        print(f"{result.label} c={p.concurrency} rate={p.request_rate}: ok {m.completed}, failed {m.failed}, "
              f"not sent {m.not_sent}, {m.request_throughput:.2f} req/s, {m.output_throughput:.1f} out tok/s, "
              f"TTFT p50 {ttft}, TPOT p50 {tpot}" + (f", errors {m.errors}" if m.errors else ""))
    if result.perplexity is not None:
        p = result.perplexity
        print(f"{result.label} perplexity: {p.perplexity} over {p.scored_tokens} tokens"
              + (f", window errors {p.errors}" if p.errors else ""))
    print(f"wrote {out}")


async def _main_async(args, argv: list[str]) -> int:
    budget = Budget.from_duration(args.max_duration or None)
    progress = not args.no_progress
    out = Path(args.out)
    if args.command == "compare" and args.results:
        if len(args.results) != 2 or args.base_url:
            raise ValueError("compare takes two result files, or two --base-url (not both)")
        results = []
        for path, label in zip(args.results, (args.label + [None, None])[:2], strict=True):
            try:
                result = decode(Path(path).read_bytes(), source=path)
            except OSError as exc:
                raise ValueError(f"{path}: cannot read ({exc})") from None
            if label:
                result.label = label
            results.append(result)
        _distinct_labels(results)
        write_comparison(results[0], results[1], out)
        print(f"wrote {out / 'compare.md'}")
        return 0

    load = _load_config(args) if args.command in ("load", "sweep") or (
        args.command == "compare" and not args.no_load) else None
    ppl = _ppl_config(args)
    if args.command == "ppl":
        load = None
    if args.command != "compare":
        endpoint = Endpoint(args.base_url, args.model)
        result = await _with_stop_signal(budget, run_bench(endpoint, label=args.label, load=load, perplexity=ppl,
                                                            budget=budget, out_dir=out, argv=argv,
                                                            progress=progress))
        _print_summary(result, out)
        return 0 if _measured(result) else 1

    if len(args.base_url) != 2:
        raise ValueError("compare: give two result files or --base-url twice")
    if load is None and ppl is None:
        raise ValueError("compare --no-load needs --ppl-text")
    models = (args.model + [None, None])[:2] if len(args.model) != 1 else args.model * 2
    labels = (args.label + [None, None])[:2]
    results = []
    for side, base_url, model, label in zip("ab", args.base_url, models, labels, strict=True):
        endpoint = Endpoint(base_url, model)
        result = await _with_stop_signal(budget, run_bench(
            endpoint, label=label, load=load, perplexity=ppl, budget=budget,
            out_dir=out / side, argv=argv, progress=progress))
        _print_summary(result, out / side)
        results.append(result)
    _distinct_labels(results)
    write_comparison(results[0], results[1], out)
    print(f"wrote {out / 'compare.md'}")
    return 0 if all(_measured(r) for r in results) else 1


def _distinct_labels(results: list[BenchResult]) -> None:
    if results[0].label == results[1].label:
        results[0].label += " (a)"
        results[1].label += " (b)"


async def _bounded(args, argv: list[str]) -> int:
    """Hard backstop behind the cooperative deadline: setup calls (model list, tokenization) and a
    stuck write can never keep the tool alive for long past --max-duration."""
    if not args.max_duration:
        return await _main_async(args, argv)
    try:
        return await asyncio.wait_for(_main_async(args, argv), args.max_duration + HARD_STOP_GRACE_S)
    except asyncio.TimeoutError:
        print(f"error: still running {HARD_STOP_GRACE_S:.0f} s after --max-duration; stopped (results of the "
              "points already finished are on disk)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_bounded(args, argv))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RequestFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
