"""Read a JSON object from a file with an error that names the file and the place it breaks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vllm_autoround.format.errors import FormatError


def read_json_object(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object")
    return data
