"""Check a quantized checkpoint against its config before any tensor is loaded.

Reads only safetensors headers, so it is cheap enough to run every time vLLM opens a checkpoint, and
it turns every mismatch into one line naming the file and tensor.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import torch

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.schema import LayerScheme, QuantConfig, load_quant_config
from vllm_autoround.format.tensors import expected_shapes

_DTYPES = {"I32": torch.int32, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
           "F64": torch.float64, "I64": torch.int64, "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16}
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class TensorInfo:
    __slots__ = ("file", "dtype", "shape")

    def __init__(self, file: Path, dtype: str, shape: tuple[int, ...]) -> None:
        self.file, self.dtype, self.shape = file, dtype, shape


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes of one safetensors file; checks that the data is all there."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise FormatError(f"{path}: truncated safetensors file (no header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise FormatError(f"{path}: truncated safetensors file (header of {header_len} bytes, "
                                  f"file of {size})")
            header = json.loads(fh.read(header_len))
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FormatError(f"{path}: corrupt safetensors header") from None
    data_len = size - 8 - header_len
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        if end > data_len:
            raise FormatError(f"{path}: truncated safetensors file: tensor {name!r} ends at byte {end} of "
                              f"{data_len} data bytes")
        shape = tuple(entry["shape"])
        expected = _ITEMSIZE.get(entry["dtype"], 0) * int(torch.Size(shape).numel())
        if expected and end - begin != expected:
            raise FormatError(f"{path}: tensor {name!r} has {end - begin} bytes, expected {expected}")
        out[name] = TensorInfo(path, entry["dtype"], shape)
    return out


def checkpoint_tensors(model_dir: Path) -> dict[str, TensorInfo]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as exc:
            raise FormatError(f"{index}: malformed index ({exc})") from None
        paths = [model_dir / f for f in files]
    else:
        paths = sorted(model_dir.glob("*.safetensors"))
    if not paths:
        raise FormatError(f"{model_dir}: no .safetensors files")
    tensors: dict[str, TensorInfo] = {}
    for path in paths:
        tensors.update(read_header(path))
    return tensors


def quantized_layers(tensors: dict[str, TensorInfo]) -> list[str]:
    return sorted({name.rsplit(".", 1)[0] for name in tensors if name.endswith((".qweight", ".qzeros", ".scales"))})


def _check_layer(layer: str, scheme: LayerScheme, tensors: dict[str, TensorInfo]) -> None:
    def where_of(suffix: str) -> str:
        return f"{tensors[f'{layer}.{suffix}'].file}: {layer}.{suffix}"

    for suffix in ("qweight", "qzeros", "scales"):
        if f"{layer}.{suffix}" not in tensors:
            present = next(f"{layer}.{s}" for s in ("qweight", "qzeros", "scales") if f"{layer}.{s}" in tensors)
            raise FormatError(f"{tensors[present].file}: {layer}.{suffix} is missing (layer has {present})")
    if not scheme.quantized:
        raise FormatError(f"{where_of('qweight')}: packed tensors for a layer the config leaves unquantized")
    qweight = tensors[f"{layer}.qweight"]
    if qweight.dtype != "I32" or len(qweight.shape) != 2:
        raise FormatError(f"{where_of('qweight')}: expected a 2-D int32 tensor, got {qweight.dtype} "
                          f"{list(qweight.shape)}")
    if (qweight.shape[0] * 32) % scheme.bits:
        raise FormatError(f"{where_of('qweight')}: {qweight.shape[0]} rows do not hold whole {scheme.bits}-bit "
                          f"values")
    in_features, out_features = qweight.shape[0] * 32 // scheme.bits, qweight.shape[1]
    try:
        scheme.check_layer(in_features, out_features, where_of("qweight"))
    except FormatError as exc:
        raise FormatError(f"{exc} (bits={scheme.bits}, group_size={scheme.group_size})") from None
    shapes = expected_shapes(scheme, in_features, out_features)
    for suffix, want_dtype in (("qzeros", "I32"), ("scales", None), ("g_idx", "I32")):
        info = tensors.get(f"{layer}.{suffix}")
        if info is None:
            continue
        if info.shape != shapes[suffix]:
            raise FormatError(f"{where_of(suffix)}: shape {list(info.shape)}, expected {list(shapes[suffix])} for "
                              f"bits={scheme.bits} group_size={scheme.group_size} "
                              f"[out={out_features}, in={in_features}]")
        if want_dtype and info.dtype != want_dtype:
            raise FormatError(f"{where_of(suffix)}: dtype {info.dtype}, expected int32")
        if suffix == "scales" and info.dtype not in ("F16", "BF16", "F32"):
            raise FormatError(f"{where_of(suffix)}: dtype {info.dtype}, expected float16/bfloat16/float32")


def validate_checkpoint(model_dir: str | Path, config: QuantConfig | None = None) -> dict[str, TensorInfo]:
    """Raise FormatError on the first inconsistency; return the header info of every tensor."""
    model_dir = Path(model_dir)
    config = config or load_quant_config(model_dir)
    tensors = checkpoint_tensors(model_dir)
    for layer in quantized_layers(tensors):
        _check_layer(layer, config.scheme_for(layer), tensors)
    return tensors


def main(argv: list[str] | None = None) -> int:
    """``python -m vllm_autoround.format.validate CKPT``: check a checkpoint, print OK or the problem."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vllm_autoround.format.validate CHECKPOINT_DIR", file=sys.stderr)
        return 2
    try:
        tensors = validate_checkpoint(args[0])
    except FormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {len(quantized_layers(tensors))} quantized layers, {len(tensors)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
