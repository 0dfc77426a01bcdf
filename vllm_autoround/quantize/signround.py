"""SignRound: tune each decoder block's rounding offsets and min/max clipping scales by signed gradient descent.

For block ``i`` the tuning inputs are the outputs of the already-quantized blocks ``0..i-1`` and the targets
are the full-precision block's outputs on the full-precision chain (auto-round's default,
``enable_quanted_input``). Per group of each linear weight: ``v`` (init 0, kept in [-0.5, 0.5]) offsets
the rounding, ``alpha``/``beta`` (init 1, kept in [0.5, 1]) scale the min/max. Loss is the MSE between the
fake-quantized and the full-precision block outputs; the update is ``p -= lr * sign(grad)`` with the lr
decaying linearly to 0 (auto-round's SignSGD + LinearLR); the parameters of the best loss seen are kept.

The inner loop never reads a value back to the host: batches are gathered by precomputed device indices,
the loss history and the best parameters are tracked on the device, and keeping the best parameters and
the update are one (compiled) pass per parameter. Each block is packed and written as soon as it is tuned;
``--resume`` replays the finished blocks from their written shards (bit-identical to the uninterrupted run)
and tunes the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from vllm_autoround.format.schema import LayerScheme
from vllm_autoround.kernels.reference import dequantize
from vllm_autoround.quantize.block_io import BlockCall, BlockSource, block_output, drop_tensors, map_tensors
from vllm_autoround.quantize.iteration_graph import graphs_wanted, run_iterations
from vllm_autoround.quantize.model_files import ModelFiles
from vllm_autoround.quantize.plan import LinearLayer, QuantPlan
from vllm_autoround.quantize.recipes import Recipe
from vllm_autoround.quantize.rtn import REST_UNIT, block_unit, unit_names, unit_tensors
from vllm_autoround.quantize.tuned_linear import MINMAX_BOUNDS, V_BOUND, TunedLinear, fake_quant
from vllm_autoround.quantize.writer import CheckpointWriter

EXIT_AFTER_BLOCK_ENV = "VLLM_AUTOROUND_EXIT_AFTER_BLOCK"  # testing hook: die hard after writing block k
COMPILE_ENV = "VLLM_AUTOROUND_COMPILE"  # auto | block | quant | off
COMPILE_MODES = ("auto", "block", "quant", "off")


@dataclass(frozen=True)
class TuneConfig:
    """What the optimizer does; lr/minmax_lr None = auto-round's per-layer defaults."""

    iters: int
    batch_size: int
    gradient_accumulate_steps: int = 1
    lr: float | None = None
    minmax_lr: float | None = None
    seed: int = 42

    def rounding_lr(self, bits: int) -> float:
        """auto-round: 1/iters, or 2/iters for <= 3-bit layers once iters >= 1000 (the "best" recipe)."""
        if self.lr is not None:
            return self.lr
        return (2.0 if self.iters >= 1000 and bits <= 3 else 1.0) / self.iters

    def minmax_lr_for(self, bits: int) -> float:
        return self.minmax_lr if self.minmax_lr is not None else self.rounding_lr(bits)


@dataclass
class Runtime:
    """Where and how tensors live: tuning device, autocast dtype, where cached block inputs live."""

    device: torch.device
    amp_dtype: torch.dtype | None
    cache_device: torch.device
    compile: str  # block | quant | off

    @classmethod
    def create(cls, device: str = "auto", low_gpu_mem_usage: bool = False, compile_mode: str | None = None):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        mode = (compile_mode or os.environ.get(COMPILE_ENV) or "auto").lower()
        if mode not in COMPILE_MODES:
            raise ValueError(f"{COMPILE_ENV}={mode!r}: choose one of {COMPILE_MODES}")
        if mode == "auto":
            mode = "block" if dev.type == "cuda" else "off"
        amp = torch.bfloat16 if dev.type == "cuda" else None
        cache = torch.device("cpu") if low_gpu_mem_usage else dev
        return cls(dev, amp, cache, mode)

    @property
    def act_dtype(self) -> torch.dtype:
        """Dtype of cached block inputs/outputs."""
        return self.amp_dtype or torch.float32

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # no cast cache: nothing here is cast twice, and a CUDA graph capture must not keep one
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def sample_schedule(nsamples: int, batch_size: int, accumulate: int, iters: int, seed: int) -> torch.Tensor:
    """``[iters, min(nsamples, batch_size * accumulate)]`` sample indices: cyclic passes over seeded shuffles,
    a fresh shuffle whenever fewer than a whole batch remain (auto-round's IndexSampler)."""
    size = min(nsamples, batch_size * accumulate)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(nsamples, generator=gen)
    pos = 0
    rows = []
    for _ in range(iters):
        if pos + size > nsamples:
            order = torch.randperm(nsamples, generator=gen)
            pos = 0
        rows.append(order[pos : pos + size])
        pos += size
    return torch.stack(rows) if rows else torch.empty(0, size, dtype=torch.long)


class BatchFeeder:
    """Tuning batches (inputs, targets) on the tuning device, without host syncs.

    Device-resident caches are gathered with device index tensors. CPU caches (``--low_gpu_mem_usage``)
    are copied sample by sample from pinned memory on a side stream, one micro-batch ahead.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, schedule: torch.Tensor, batch_size: int,
                 device: torch.device) -> None:
        self.inputs, self.targets = inputs, targets
        self.device = device
        width = schedule.shape[1]
        self.bounds = [(a, min(a + batch_size, width)) for a in range(0, width, batch_size)]
        self.schedule = schedule
        self.remote = inputs.device != device
        if not self.remote:
            self.index = schedule.to(device)
        self.stream = torch.cuda.Stream(device) if self.remote and device.type == "cuda" else None
        self._next: tuple[int, int, Any] | None = None

    @property
    def elements(self) -> int:
        """Elements of one iteration's outputs: the loss is a mean over these."""
        return self.schedule.shape[1] * math.prod(self.inputs.shape[1:])

    def _copy(self, it: int, chunk: int):
        a, b = self.bounds[chunk]
        rows = self.schedule[it, a:b].tolist()
        if self.stream is None:
            index = self.schedule[it, a:b]
            return (self.inputs.index_select(0, index).to(self.device),
                    self.targets.index_select(0, index).to(self.device), None)
        with torch.cuda.stream(self.stream):
            x = torch.empty((len(rows), *self.inputs.shape[1:]), dtype=self.inputs.dtype, device=self.device)
            y = torch.empty((len(rows), *self.targets.shape[1:]), dtype=self.targets.dtype, device=self.device)
            for j, row in enumerate(rows):
                x[j].copy_(self.inputs[row], non_blocking=True)
                y[j].copy_(self.targets[row], non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return x, y, event

    def device_batches(self, it: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of iteration ``it`` (a one-element device tensor), for device-resident caches:
        gathered on the device without reading ``it``, so a captured iteration replays for any value."""
        row = self.index.index_select(0, it)[0]
        for a, b in self.bounds:
            index = row[a:b]
            yield self.inputs.index_select(0, index), self.targets.index_select(0, index)

    def batches(self, it: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of iteration ``it`` from CPU caches (``remote``), the next one's copy started
        before this one is yielded; device caches go through :meth:`device_batches`."""
        for chunk in range(len(self.bounds)):
            if self._next is not None and self._next[:2] == (it, chunk):
                x, y, event = self._next[2]
            else:
                x, y, event = self._copy(it, chunk)
            nxt = (it, chunk + 1) if chunk + 1 < len(self.bounds) else (it + 1, 0)
            self._next = (*nxt, self._copy(*nxt)) if nxt[0] < self.schedule.shape[0] else None
            if event is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(event)
                x.record_stream(stream)
                y.record_stream(stream)
            yield x, y


def _squared_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out.float() - target.float()).square().sum()


def _keep_best_and_step(p: torch.Tensor, grad: torch.Tensor, best: torch.Tensor, improved: torch.Tensor,
                        step: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> None:
    """``best <- p`` if this iteration's loss improved, then ``p <- clamp(p - step * sign(grad), low, high)``.

    Compiled on CUDA to one pass over each parameter: as a copy plus five multi-tensor passes it took 3.8 ms
    of a 37.7 ms iteration on the Llama-3-8B-shaped block (H200, ci/gpu/profile_tuner.py). Every argument is
    a tensor (the bounds 0-d), so one compiled kernel serves all parameters and iterations.
    """
    best.copy_(torch.where(improved, p, best))
    p.copy_(torch.clamp(p - step * torch.sign(grad), low, high))


@dataclass
class TuneResult:
    params: dict[str, dict[str, torch.Tensor]]  # layer name relative to the block -> v/alpha/beta
    trace: list[float]  # loss of every iteration, before its update
    best_loss: float
    best_iter: int
    graphed: bool = False  # the iterations after warm-up replayed a captured CUDA graph


def _raise_recompile_limit(limit: int = 64) -> None:
    """Blocks of one model share compiled code; sliding/full attention layers and shapes add variants."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))


class BlockTuner:
    """SignRound for one block at a time; holds the compiled helpers shared by all blocks."""

    def __init__(self, config: TuneConfig, runtime: Runtime) -> None:
        self.config = config
        self.rt = runtime
        if runtime.compile != "off":
            _raise_recompile_limit()
        quant = runtime.compile == "quant"
        # One kernel pair (forward, backward) for every weight shape; inlined when the whole block compiles.
        self.quant_fn = torch.compile(fake_quant, dynamic=True) if quant else fake_quant
        self.loss_fn = torch.compile(_squared_error, dynamic=True) if runtime.compile != "off" else _squared_error
        self.step_fn = (torch.compile(_keep_best_and_step, dynamic=True) if runtime.compile != "off"
                        else _keep_best_and_step)

    def prepare(self, block: torch.nn.Module) -> torch.nn.Module:
        if self.rt.compile == "block":
            block.compile(dynamic=False)
        return block

    def call(self, block: torch.nn.Module, x: torch.Tensor, call: BlockCall) -> torch.Tensor:
        with self.rt.autocast():
            return block_output(block(x, *call.args, **call.kwargs))

    @torch.no_grad()
    def forward_all(self, block: torch.nn.Module, inputs: torch.Tensor, call: BlockCall,
                    out: torch.Tensor | None = None, targets: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, float | None]:
        """Block outputs for every cached sample, in batches (into ``out``, which may be ``inputs``), and
        the mean squared error against ``targets`` if given."""
        if out is None:
            out = torch.empty(inputs.shape, dtype=inputs.dtype, device=inputs.device, pin_memory=inputs.is_pinned())
        total = torch.zeros((), dtype=torch.float64, device=self.rt.device)
        step = self.config.batch_size
        for a in range(0, inputs.shape[0], step):
            x = inputs[a : a + step].to(self.rt.device, non_blocking=True)
            y = self.call(block, x, call)
            if targets is not None:
                total += self.loss_fn(y, targets[a : a + step].to(self.rt.device, non_blocking=True)).double()
            out[a : a + step].copy_(y)
        loss = None if targets is None else float(total) / targets.numel()
        return out, loss

    def tune(self, block: torch.nn.Module, layers: dict[str, LayerScheme], inputs: torch.Tensor,
             targets: torch.Tensor, call: BlockCall, seed: int) -> TuneResult:
        originals: dict[str, torch.nn.Linear] = {}
        tuned: dict[str, TunedLinear] = {}
        out_dtype = self.rt.amp_dtype or torch.float32
        for name, scheme in layers.items():
            linear = block.get_submodule(name)
            owner_name, _, leaf = name.rpartition(".")
            owner = block.get_submodule(owner_name) if owner_name else block
            originals[name] = linear
            tuned[name] = TunedLinear(linear, scheme, out_dtype, self.quant_fn)
            setattr(owner, leaf, tuned[name])
        try:
            return self._optimize(block, tuned, inputs, targets, call, seed)
        finally:
            for name, linear in originals.items():
                owner_name, _, leaf = name.rpartition(".")
                setattr(block.get_submodule(owner_name) if owner_name else block, leaf, linear)
                drop_tensors(tuned[name])

    def _optimize(self, block, tuned: dict[str, TunedLinear], inputs, targets, call, seed) -> TuneResult:
        cfg, rt = self.config, self.rt
        iters = cfg.iters
        schedule = sample_schedule(inputs.shape[0], cfg.batch_size, cfg.gradient_accumulate_steps, iters, seed)
        feeder = BatchFeeder(inputs, targets, schedule, cfg.batch_size, rt.device)
        v_bounds, mm_bounds = ((torch.tensor(low, device=rt.device), torch.tensor(high, device=rt.device))
                               for low, high in ((-V_BOUND, V_BOUND), MINMAX_BOUNDS))
        params, lrs, bounds = [], [], []
        for m in tuned.values():
            params += [m.v, m.alpha, m.beta]
            lrs += [cfg.rounding_lr(m.scheme.bits)] + [cfg.minmax_lr_for(m.scheme.bits)] * 2
            bounds += [v_bounds, mm_bounds, mm_bounds]
        # LinearLR(start 1, end 0, total_iters=iters), stepped after each update: the step of iteration i is
        # lr * (1 - i / iters), as float32 on the device, one table per learning rate
        steps = {lr: torch.tensor([lr * (1.0 - i / iters) for i in range(iters)], dtype=torch.float32,
                                  device=rt.device) for lr in set(lrs)}
        best = [p.detach().clone() for p in params]
        best_loss = torch.full((), float("inf"), device=rt.device)
        best_iter = torch.zeros((), dtype=torch.long, device=rt.device)
        trace = torch.zeros(iters, device=rt.device)
        scale = 1.0 / feeder.elements
        it_index = torch.zeros(1, dtype=torch.long, device=rt.device)  # the iteration, advanced on the device
        host_it = [0]  # the same, for the CPU-cache feeder (never captured)

        def iteration() -> None:
            """One iteration; reads nothing from the host and updates its state in place (capturable)."""
            batches = feeder.batches(host_it[0]) if feeder.remote else feeder.device_batches(it_index)
            host_it[0] += 1
            total = torch.zeros((), device=rt.device)
            for x, y in batches:
                loss = self.loss_fn(self.call(block, x, call), y) * scale
                loss.backward()
                total += loss.detach()
            with torch.no_grad():
                trace.index_copy_(0, it_index, total.view(1))
                improved = total < best_loss
                best_loss.copy_(torch.where(improved, total, best_loss))
                best_iter.copy_(torch.where(improved, it_index[0], best_iter))
                for p, b, lr, (low, high) in zip(params, best, lrs, bounds, strict=True):
                    if p.grad is None:  # a layer the loss does not reach
                        torch.where(improved, p, b, out=b)
                    else:
                        self.step_fn(p, p.grad, b, improved, steps[lr].index_select(0, it_index)[0], low, high)
                        p.grad = None
                it_index.add_(1)

        def clear_grads() -> None:
            for p in params:
                p.grad = None

        graphed = run_iterations(iteration, iters, rt.device, graphs_wanted(rt.device) and not feeder.remote,
                                 clear_grads)
        with torch.no_grad():
            for p, b in zip(params, best, strict=True):
                p.copy_(b)
        result = {name: {"v": m.v.detach(), "alpha": m.alpha.detach(), "beta": m.beta.detach()}
                  for name, m in tuned.items()}
        return TuneResult(result, trace.cpu().tolist(), float(best_loss), int(best_iter), graphed)


def _relative(layer: LinearLayer, prefix: str) -> str:
    return layer.name[len(prefix):]


def load_quantized_weights(block: torch.nn.Module, tensors: dict[str, torch.Tensor], layers: list[LinearLayer],
                           prefix: str, zero_point_offset: int) -> None:
    """Replace the block's planned linear weights by their dequantized checkpoint values, exactly the
    weights a reader of the checkpoint gets; this is what the next block's inputs are computed with."""
    for layer in layers:
        s = layer.scheme
        linear = block.get_submodule(_relative(layer, prefix))
        dev = linear.weight.device
        weight = dequantize(tensors[f"{layer.name}.qweight"].to(dev), tensors[f"{layer.name}.qzeros"].to(dev),
                            tensors[f"{layer.name}.scales"].to(dev), s.bits, s.group_size, zero_point_offset,
                            dtype=torch.float32)
        linear.weight.data = weight.to(device=linear.weight.device, dtype=linear.weight.dtype)


def _checkpoint_dtype(files: ModelFiles, layers: list[LinearLayer]) -> torch.dtype:
    for layer in layers:
        name = f"{layer.name}.weight"
        if files.has(name):
            return files.tensor(name).dtype
    return torch.float32


def _exit_hook(index: int) -> None:
    if os.environ.get(EXIT_AFTER_BLOCK_ENV) == str(index):
        os._exit(17)


def tune_model(files: ModelFiles, plan: QuantPlan, writer: CheckpointWriter, recipe: Recipe,
               args: argparse.Namespace, tokens: torch.Tensor) -> dict[str, Any]:
    """Tune and write every block of ``plan`` on calibration ``tokens``; returns the report's SignRound part."""
    started = time.monotonic()
    accumulate = getattr(args, "gradient_accumulate_steps", 1)
    config = TuneConfig(recipe.iters, min(recipe.batch_size, recipe.nsamples), accumulate, recipe.lr,
                        recipe.minmax_lr, args.seed)
    rt = Runtime.create(getattr(args, "device", "auto"), getattr(args, "low_gpu_mem_usage", False))
    tuner = BlockTuner(config, rt)
    offset = plan.quant_config().zero_point_offset
    units = unit_names(files, plan)

    source = BlockSource(files, plan)
    hidden, calls = source.capture(tokens, rt.act_dtype)
    pin = rt.cache_device.type == "cpu" and rt.device.type == "cuda"
    fp_in = hidden.pin_memory() if pin else hidden.to(rt.cache_device)
    del hidden
    q_in = fp_in
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)

    blocks: list[dict[str, Any]] = []
    bar = tqdm(range(plan.num_blocks), desc="SignRound", unit="block")
    for i in bar:
        t0 = time.monotonic()
        unit = block_unit(i)
        prefix = f"{plan.block_prefix}.{i}."
        layers = [layer for layer in plan.blocks[i] if layer.scheme.quantized]
        dtype = _checkpoint_dtype(files, layers) if rt.device.type == "cuda" else torch.float32
        block = tuner.prepare(source.block(i, dtype, rt.device))
        call = BlockCall(map_tensors(calls[i].args, lambda t: t.to(rt.device)),
                         map_tensors(calls[i].kwargs, lambda t: t.to(rt.device)))
        # Full-precision chain: targets of this block, inputs of the next (in place once q_in has split off).
        targets, _ = tuner.forward_all(block, fp_in, call, out=None if fp_in is q_in else fp_in)
        if writer.is_done(unit):
            tensors = writer.read_unit(unit)
            info = dict(writer.unit_info(unit), resumed=True)
        else:
            result = tuner.tune(block, {_relative(layer, prefix): layer.scheme for layer in layers},
                                q_in, targets, call, seed=args.seed * 1_000_003 + i) if layers else None
            tuned = {prefix + k: v for k, v in result.params.items()} if result else {}
            tensors = unit_tensors(files, units[unit], layers, offset, tuned, device=rt.device)
            info = {"index": i, "layers": len(layers),
                    "loss_iter0": result.trace[0] if result else None,
                    "loss_best": result.best_loss if result else None,
                    "best_iter": result.best_iter if result else None,
                    "cuda_graph": result.graphed if result else False,
                    "tune_seconds": round(time.monotonic() - t0, 3),
                    "trace": [float(f"{x:.6g}") for x in result.trace] if result else []}
            del result, tuned  # packed: the rounding offsets (4 bytes per weight) must not outlive the block
            writer.write_unit(unit, tensors, info)
            _exit_hook(i)
        load_quantized_weights(block, tensors, layers, prefix, offset)
        # Quantized chain, in place: nothing needs this block's inputs any more.
        q_in, final = tuner.forward_all(block, q_in, call, out=q_in, targets=targets)
        fp_in = targets
        source.release(i)
        del block, tensors
        rt.sync()
        info = dict(info, loss_final=final, seconds=round(time.monotonic() - t0, 3))
        blocks.append(info)
        first, best = info.get("loss_iter0"), info.get("loss_best")
        summary = (f"block {i}: loss {first:.4g} -> {best:.4g} (all samples {final:.4g}), {info['seconds']:.1f}s"
                   if first is not None else f"block {i}: nothing to tune")
        bar.set_postfix_str(summary.split(": ", 1)[1])
        tqdm.write(summary + (" [resumed]" if info.get("resumed") else ""))
    bar.close()

    if not writer.is_done(REST_UNIT):
        writer.write_unit(REST_UNIT, unit_tensors(files, units[REST_UNIT], plan.extra, offset, device=rt.device))
    report: dict[str, Any] = {
        "device": str(rt.device), "compile": rt.compile,
        "low_gpu_mem_usage": bool(getattr(args, "low_gpu_mem_usage", False)),
        "gradient_accumulate_steps": accumulate,
        "calibration": {"dataset": args.dataset or "built-in", "nsamples": int(tokens.shape[0]),
                        "seqlen": int(tokens.shape[1])},
        "tuning_seconds": round(time.monotonic() - started, 3), "blocks": blocks,
    }
    if rt.device.type == "cuda":
        report["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(rt.device) / 2**30, 3)
    return report
