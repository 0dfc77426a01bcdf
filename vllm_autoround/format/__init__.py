"""The checkpoint contract shared by every writer and reader in the package.

Layout is auto-round's ``auto_round:auto_gptq`` packing (GPTQ v1 int32 words):

* ``qweight``  int32 ``[K * bits / 32, N]``: the K (input) axis packed, 32 values per ``bits`` words,
  read as a little-endian bit stream, so 3-bit values straddle word boundaries.
* ``qzeros``   int32 ``[G, N * bits / 32]``: zero points packed the same way along N; stored minus one
  when ``packing_format`` is ``auto_round:auto_gptq`` (what auto-round writes for sym), raw when it is
  ``auto_round`` (what auto-round writes for asym).
* ``scales``   float16 ``[G, N]``; may be negative (auto-round's full-range sym scheme).
* ``g_idx``    int32 ``[K]`` (optional): must equal ``arange(K) // group_size``.

``G = K / group_size`` (``1`` for per-channel, written ``group_size: -1``). The dequantized weight is
``W[n, k] = (q[k, n] - z[k // gs, n]) * s[k // gs, n]``.
"""

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.packing import (
    SUPPORTED_BITS,
    pack_cols,
    pack_rows,
    unpack_cols,
    unpack_rows,
)
from vllm_autoround.format.schema import LayerScheme, QuantConfig, load_quant_config
from vllm_autoround.format.tensors import PackedLinear, pack_linear, unpack_linear

__all__ = [
    "SUPPORTED_BITS",
    "FormatError",
    "LayerScheme",
    "PackedLinear",
    "QuantConfig",
    "load_quant_config",
    "pack_cols",
    "pack_linear",
    "pack_rows",
    "unpack_cols",
    "unpack_linear",
    "unpack_rows",
]
