"""Pieces of the SignRound tuner, each against an independent reference."""

from __future__ import annotations

import json

import pytest
import torch

from vllm_autoround.format.schema import LayerScheme
from vllm_autoround.format.tensors import pack_linear
from vllm_autoround.kernels.reference import dequantize
from vllm_autoround.quantize.block_io import BlockSource
from vllm_autoround.quantize.model_files import ModelFiles
from vllm_autoround.quantize.plan import build_plan, meta_model
from vllm_autoround.quantize.qdq import fake_quantize, quantize_to_codes
from vllm_autoround.quantize.recipes import RECIPES, resolve
from vllm_autoround.quantize.signround import BlockTuner, Runtime, TuneConfig, _keep_best_and_step, sample_schedule
from vllm_autoround.quantize.tuned_linear import MINMAX_BOUNDS, V_BOUND, fake_quant, weight_range

SCHEMES = [LayerScheme(b, g, s) for b in (2, 3, 4, 8) for g in (32, 128, -1) for s in (True, False)]


def _params(n: int, k: int, scheme: LayerScheme, gen: torch.Generator):
    groups = scheme.groups(k)
    v = (torch.rand(n, k, generator=gen) - 0.5).requires_grad_()
    alpha = (0.5 + 0.5 * torch.rand(n, groups, generator=gen)).requires_grad_()
    beta = (0.5 + 0.5 * torch.rand(n, groups, generator=gen)).requires_grad_()
    return v, alpha, beta


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_fake_quant_matches_qdq_values_and_gradients(scheme):
    """The tuner's fake-quant (constant min/max, float32 math) is qdq.fake_quantize: same outputs and the
    same straight-through gradients for v, alpha and beta."""
    gen = torch.Generator().manual_seed(scheme.bits * 7 + scheme.group_size)
    n, k = 48, 256
    w = torch.randn(n, k, generator=gen) * 0.05
    w[0, :32] = 0.0  # an all-zero group
    w[1, :32] = w[1, :32].abs()  # a group with no negative values
    grad_out = torch.randn(n, k, generator=gen)
    v, a, b = _params(n, k, scheme, gen)
    ref = fake_quantize(w, scheme, v, a, b)
    ref.backward(grad_out)
    ref_grads = [t.grad.clone() for t in (v, a, b)]
    for t in (v, a, b):
        t.grad = None
    wmin, wmax = weight_range(w, scheme)
    ours = fake_quant(w, v, a, b, wmin, wmax, scheme.bits, scheme.sym, torch.float32)
    ours.backward(grad_out)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    for got, want, name in zip((v.grad, a.grad, b.grad), ref_grads, ("v", "alpha", "beta"), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=f"grad of {name}")


@pytest.mark.parametrize("scheme", SCHEMES[::3], ids=str)
def test_fake_quant_equals_what_the_checkpoint_stores(scheme):
    """Packing the tuned parameters and dequantizing with the reference reader gives back exactly the
    weight the tuner trained with: tuning and checkpoint cannot disagree."""
    gen = torch.Generator().manual_seed(11)
    n, k = 64, 256
    w = (torch.randn(n, k, generator=gen) * 0.02).to(torch.bfloat16)
    v, a, b = (t.detach() for t in _params(n, k, scheme, gen))
    wmin, wmax = weight_range(w, scheme)
    trained = fake_quant(w, v, a, b, wmin, wmax, scheme.bits, scheme.sym, torch.float32)
    offset = 0 if not scheme.sym else 1
    tensors = pack_linear(quantize_to_codes(w.float(), scheme, v, a, b), offset)
    stored = dequantize(tensors["qweight"], tensors["qzeros"], tensors["scales"], scheme.bits, scheme.group_size,
                        offset, dtype=torch.float32)
    torch.testing.assert_close(stored, trained, rtol=0, atol=0)


def test_presets_match_auto_round():
    """auto-round 0.16.1's CLI recipes (auto_round/cli/main.py RECIPES) plus the older "fast" preset."""
    from auto_round.cli.main import RECIPES as AR

    for name in ("default", "best", "light"):
        ours, theirs = RECIPES[name], AR[name]
        assert (ours.iters, ours.nsamples, ours.seqlen, ours.batch_size, ours.lr) == (
            theirs["iters"], theirs["nsamples"], theirs["seqlen"], theirs["batch_size"], theirs["lr"]), name
    assert (RECIPES["fast"].iters, RECIPES["fast"].seqlen, RECIPES["fast"].batch_size) == (200, 512, 4)
    assert RECIPES["rtn"].iters == 0
    assert resolve("light", iters=None, lr=None).lr == 5e-3
    assert resolve("best", nsamples=64).nsamples == 64 and resolve("best").iters == 1000
    with pytest.raises(ValueError, match="unknown"):
        resolve("turbo")


def test_learning_rates_follow_auto_round():
    from auto_round.algorithms.quantization.sign_round.config import SignRoundConfig

    for iters, lr, minmax in ((200, None, None), (1000, None, None), (50, 5e-3, None), (200, None, 2e-3)):
        ours = TuneConfig(iters=iters, batch_size=8, lr=lr, minmax_lr=minmax)
        theirs = SignRoundConfig(iters=iters, lr=lr, minmax_lr=minmax)
        for bits in (2, 3, 4, 8):
            assert ours.rounding_lr(bits) == pytest.approx(theirs.compute_lr(bits)), (iters, lr, bits)
            assert ours.minmax_lr_for(bits) == pytest.approx(theirs.compute_minmax_lr(bits)), (iters, minmax, bits)


def test_sample_schedule_cycles_through_shuffles():
    sched = sample_schedule(nsamples=10, batch_size=4, accumulate=1, iters=6, seed=3)
    assert sched.shape == (6, 4)
    # Two batches per shuffle (8 of 10 samples), then a fresh shuffle: no repeats inside a pass.
    for first in (0, 2, 4):
        assert len(set(sched[first : first + 2].flatten().tolist())) == 8
    assert torch.equal(sched, sample_schedule(10, 4, 1, 6, seed=3))
    assert not torch.equal(sched, sample_schedule(10, 4, 1, 6, seed=4))
    assert sample_schedule(nsamples=6, batch_size=4, accumulate=3, iters=2, seed=0).shape == (2, 6)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_keep_best_then_signed_step_decays_and_clamps(compiled):
    step_fn = torch.compile(_keep_best_and_step, dynamic=True) if compiled else _keep_best_and_step
    v_bounds = (torch.tensor(-V_BOUND), torch.tensor(V_BOUND))
    mm_bounds = tuple(torch.tensor(b) for b in MINMAX_BOUNDS)
    p = torch.zeros(5)
    best = torch.full((5,), 9.0)
    step_fn(p, torch.tensor([1.0, -1.0, 0.0, 2.0, -3.0]), best, torch.tensor(False), torch.tensor(0.05), *v_bounds)
    assert torch.equal(best, torch.full((5,), 9.0))  # no improvement: the best stays
    torch.testing.assert_close(p, torch.tensor([-0.05, 0.05, 0.0, -0.05, 0.05]))
    step_fn(p, torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0]), best, torch.tensor(True), torch.tensor(0.5), *v_bounds)
    torch.testing.assert_close(best, torch.tensor([-0.05, 0.05, 0.0, -0.05, 0.05]))  # kept before the step
    torch.testing.assert_close(p, torch.tensor([-0.5, -0.45, -0.5, -0.5, -0.45]))  # clamped at -0.5
    q = torch.full((3,), 0.52)
    step_fn(q, torch.tensor([1.0, -1.0, 0.0]), q.clone(), torch.tensor(True), torch.tensor(0.1), *mm_bounds)
    torch.testing.assert_close(q, torch.tensor([0.5, 0.62, 0.52]))


def test_step_table_is_auto_rounds_linear_decay_in_float32():
    """The step of iteration i is float32(lr * (1 - i / iters)), what a Python-scalar multiply gave before."""
    lr, iters = 1 / 200, 200
    table = torch.tensor([lr * (1.0 - i / iters) for i in range(iters)], dtype=torch.float32)
    signs = torch.tensor([1.0, -1.0])
    for i in (0, 1, 57, 199):
        assert torch.equal(signs * table[i], signs * (lr * (1.0 - i / iters)))


# ---------------------------------------------------------------------------------------------------------
# Block inputs: what our block-by-block pipeline feeds each layer is what the model itself feeds it.

def _family_config(family: str):
    import transformers as tf

    common = dict(vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                  tie_word_embeddings=False)
    sliding = ["sliding_attention", "full_attention", "sliding_attention"]
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=8)
    if family == "phi3":
        common.pop("head_dim")
        return tf.Phi3Config(**common, sliding_window=8, pad_token_id=0)
    if family == "qwen2":
        return tf.Qwen2Config(**common, use_sliding_window=True, sliding_window=8, layer_types=sliding)
    if family == "qwen3":
        return tf.Qwen3Config(**common, use_sliding_window=True, sliding_window=8, layer_types=sliding)
    if family == "gemma":
        return tf.GemmaConfig(**common)
    if family == "gemma2":
        return tf.Gemma2Config(**common, sliding_window=8, layer_types=sliding)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, sliding_window=8, layer_types=sliding)
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "phi3", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_block_inputs_reproduce_the_models_own_forward(family, tmp_path):
    """Capture + per-block materialization, fed block by block, reproduces the HF model's per-layer
    inputs and outputs: masks (incl. sliding windows that differ per layer), rotary embeddings, scaling."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_family_config(family)).eval()
    with torch.no_grad():  # non-trivial norms (Gemma's are zero-centred)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    tokens = torch.randint(3, 160, (2, 24), generator=torch.Generator().manual_seed(1))

    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    layers = model.get_decoder().layers
    hooks = [layer.register_forward_hook(
        lambda m, args, kwargs, out, i=i: seen.__setitem__(
            i, ((args[0] if args else kwargs["hidden_states"]), out[0] if isinstance(out, tuple) else out)),
        with_kwargs=True) for i, layer in enumerate(layers)]
    with torch.no_grad():
        model(input_ids=tokens, use_cache=False)
    for h in hooks:
        h.remove()

    files = ModelFiles(tmp_path)
    plan = build_plan(meta_model(files.config), LayerScheme(4, 32, True))
    source = BlockSource(files, plan)
    hidden, calls = source.capture(tokens, torch.float32)
    torch.testing.assert_close(hidden, seen[0][0], rtol=0, atol=0)
    for i, call in enumerate(calls):
        block = source.block(i, torch.float32, torch.device("cpu"))
        with torch.no_grad():
            out = block(hidden, *call.args, **call.kwargs)
        out = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(out, seen[i][1], rtol=1e-5, atol=1e-5, msg=f"{family} layer {i}")
        hidden = out


def test_forward_all_writes_in_place_and_scores(tmp_path):
    """Batched block outputs for the whole cache, optionally over the inputs, with the mean squared error."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_family_config("llama")).save_pretrained(tmp_path)
    files = ModelFiles(tmp_path)
    plan = build_plan(meta_model(files.config), LayerScheme(4, 32, True))
    source = BlockSource(files, plan)
    tokens = torch.randint(3, 160, (5, 12), generator=torch.Generator().manual_seed(2))
    hidden, calls = source.capture(tokens, torch.float32)
    block = source.block(0, torch.float32, torch.device("cpu"))
    tuner = BlockTuner(TuneConfig(iters=1, batch_size=2), Runtime.create("cpu"))
    with torch.no_grad():
        expected = block(hidden, *calls[0].args, **calls[0].kwargs)
    target = expected + 0.1
    out, loss = tuner.forward_all(block, hidden, calls[0], out=hidden, targets=target)
    assert out is hidden
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(0.01, rel=1e-4)


def test_capture_names_missing_checkpoint_tensors(tmp_path):
    from transformers import AutoModelForCausalLM

    from vllm_autoround.format.errors import FormatError

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_family_config("llama")).save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    shard = tmp_path / "model.safetensors"
    tensors = load_file(str(shard))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    files = ModelFiles(tmp_path)
    plan = build_plan(meta_model(files.config), LayerScheme(4, 32, True))
    source = BlockSource(files, plan)
    source.capture(torch.randint(3, 160, (1, 8)), torch.float32)
    source.block(0, torch.float32, torch.device("cpu"))
    with pytest.raises(FormatError, match="model.layers.1.mlp.down_proj.weight"):
        source.block(1, torch.float32, torch.device("cpu"))
    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 3
