"""Read a Hugging Face model directory tensor by tensor, without loading the whole model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.jsonfile import read_json_object

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
INDEX_NAME = "model.safetensors.index.json"
# what a Hub repository may hold besides what quantizing reads: other weight formats, ONNX, original checkpoints
HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.gguf", "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "onnx/*",
              "original/*", "*.tflite"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def locate_model(model: str | Path) -> Path:
    """A local model directory as given, or a Hugging Face Hub repository id (``org/name``, optionally
    ``org/name@revision``) fetched into the Hub cache: its config, tokenizer and safetensors weights only.

    HF_HUB_OFFLINE=1 takes the cached snapshot without asking the Hub."""
    path = Path(model)
    text = str(model)
    repo_id, _, revision = text.partition("@")
    if path.is_dir() or not _REPO_ID.match(repo_id):
        return path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise FormatError(f"{text}: not a local model directory, and huggingface_hub is not installed to fetch "
                          f"it from the Hub") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, ignore_patterns=HUB_IGNORE))
    except LocalEntryNotFoundError:
        raise FormatError(f"{text}: not a local model directory, and not in the Hugging Face Hub cache (offline, "
                          f"or the Hub could not be reached)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise FormatError(f"{text}: not a local model directory, and the Hugging Face Hub could not provide it "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r})") from None


class ModelFiles:
    """A model directory: its config and a lazy name → tensor view over its safetensors shards."""

    def __init__(self, model_dir: str | Path) -> None:
        self.root = Path(model_dir)
        if not self.root.is_dir():
            raise FormatError(f"{self.root}: model directory not found")
        self.config = read_json_object(self.root / "config.json")
        self.weight_map = self._weight_map()
        self._handles: dict[Path, Any] = {}

    def _weight_map(self) -> dict[str, Path]:
        index = self.root / INDEX_NAME
        if index.exists():
            raw = read_json_object(index).get("weight_map")
            if not isinstance(raw, dict):
                raise FormatError(f"{index}: no weight_map object")
            return {name: self.root / file for name, file in raw.items()}
        shards = sorted(self.root.glob("*.safetensors"))
        if not shards:
            other = [p.name for p in self.root.iterdir() if p.suffix in WEIGHT_SUFFIXES]
            hint = f" (found {other}; convert them to safetensors first)" if other else ""
            raise FormatError(f"{self.root}: no .safetensors weights{hint}")
        weight_map: dict[str, Path] = {}
        for shard in shards:
            for name in self._open(shard).keys():
                weight_map[name] = shard
        return weight_map

    def _open(self, path: Path):
        handle = self._handles.get(path) if hasattr(self, "_handles") else None
        if handle is None:
            try:
                handle = safe_open(str(path), framework="pt")
            except FileNotFoundError:
                raise FormatError(f"{path}: shard listed in the index is missing") from None
            except (SafetensorError, OSError) as exc:
                raise FormatError(f"{path}: unreadable safetensors file ({exc})") from None
            if hasattr(self, "_handles"):
                self._handles[path] = handle
        return handle

    def names(self) -> list[str]:
        return list(self.weight_map)

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def tensor(self, name: str) -> torch.Tensor:
        try:
            path = self.weight_map[name]
        except KeyError:
            raise FormatError(f"{self.root}: tensor {name!r} not found in the checkpoint") from None
        try:
            return self._open(path).get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise FormatError(f"{path}: cannot read tensor {name!r} ({exc})") from None

    def tensors(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        for name in names:
            yield name, self.tensor(name)

    def auxiliary_files(self) -> list[Path]:
        """Everything a checkpoint needs besides weights: tokenizer, generation config, templates."""
        return [p for p in sorted(self.root.iterdir())
                if p.is_file() and p.suffix not in WEIGHT_SUFFIXES and p.name not in ("config.json", INDEX_NAME)]
