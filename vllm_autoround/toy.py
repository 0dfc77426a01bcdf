"""A small built-in model so that the demo and the tests need no model hub.

The text is the Python reference documentation that ships with CPython (``pydoc_data.topics``,
PSF license): real English prose available on every machine. The model is a 2-layer Llama- or
Qwen3-style network, briefly trained on that text so that its next-token distributions are peaked
(random weights give near-ties that make greedy comparisons meaningless).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

TOY_FAMILIES = ("llama", "qwen3", "mixtral")


def builtin_text() -> str:
    """English prose that every CPython installation ships."""
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))


def _train_tokenizer(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _config(family: str, vocab_size: int, layers: int, hidden: int, intermediate: int):
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128), head_dim=64,
        max_position_embeddings=512, bos_token_id=0, eos_token_id=1, pad_token_id=2,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if family == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(**common)
    if family == "mixtral":
        from transformers import MixtralConfig

        # transformers keeps the experts as fused 3-D tensors, which the quantizer leaves in full precision
        return MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2)
    raise ValueError(f"unknown toy family {family!r}; choose one of {TOY_FAMILIES}")


def _train(model, ids: torch.Tensor, steps: int, seqlen: int, batch: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - seqlen - 1, (batch,), generator=gen)
        x = torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return float(loss.detach())


def build_toy_model(
    output_dir: str | os.PathLike,
    family: str = "llama",
    *,
    layers: int = 2,
    hidden: int = 256,
    intermediate: int = 512,
    vocab_size: int = 1024,
    train_steps: int = 150,
    seed: int = 0,
) -> Path:
    """Write a small trained causal LM with its tokenizer to ``output_dir`` (atomically) and return it."""
    output_dir = Path(output_dir)
    if (output_dir / "config.json").exists():
        return output_dir
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(seed)
    text = builtin_text()
    tokenizer = _train_tokenizer(text, vocab_size)
    model = AutoModelForCausalLM.from_config(_config(family, len(tokenizer), layers, hidden, intermediate))
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    with torch.random.fork_rng():
        loss = _train(model, ids, train_steps, seqlen=128, batch=8, seed=seed)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "toy_model.json").write_text(json.dumps({"family": family, "train_steps": train_steps,
                                                        "final_train_loss": loss, "seed": seed}))
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir
