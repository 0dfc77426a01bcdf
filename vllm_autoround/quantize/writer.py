"""Write a checkpoint unit by unit into ``OUTPUT.partial/`` and publish it with one rename.

Each unit (a decoder block, or the tensors outside blocks) becomes its own safetensors shard the moment
it is ready, followed by a manifest update, both atomic. A crash leaves only the ``.partial`` directory,
never a directory that looks complete; ``--resume`` reads the manifest and skips finished units.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vllm_autoround.format.errors import FormatError
from vllm_autoround.format.files import write_atomic, write_text_atomic

MANIFEST = "progress.json"
UNIT_FILE = "model-{}.safetensors"  # each unit's shard, in .partial and in the published checkpoint


def written_units(checkpoint: str | Path) -> dict[str, Path]:
    """Unit → shard of a published checkpoint (its shards keep the names the writer gave them)."""
    prefix, suffix = UNIT_FILE.split("{}")
    return {path.name.removeprefix(prefix).removesuffix(suffix): path
            for path in sorted(Path(checkpoint).glob(UNIT_FILE.format("*")))}


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class CheckpointWriter:
    """Streams shards of a quantized checkpoint and finalizes it atomically."""

    def __init__(self, output_dir: str | Path, *, resume: bool = False, run_signature: dict | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.partial = self.output_dir.with_name(self.output_dir.name + ".partial")
        self.signature = run_signature or {}
        if self.output_dir.exists():
            raise FormatError(f"{self.output_dir}: output directory already exists; remove it or pick another")
        if self.partial.exists() and not resume:
            raise FormatError(f"{self.partial}: an interrupted run left this directory; pass --resume to "
                              f"continue it or delete it")
        self.partial.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        self.manifest = self._load_manifest() if resume else {"signature": self.signature, "units": {}}
        write_json_atomic(self.partial / MANIFEST, self.manifest)

    def _remove_temporaries(self) -> None:
        """Delete the temporary files a killed run left (``format.files.write_atomic`` names them ``.NAME.*``;
        nothing else in ``.partial`` starts with a dot until ``finalize`` copies the model's side files)."""
        for path in self.partial.iterdir():
            if path.name.startswith(".") and path.is_file():
                path.unlink()

    def _load_manifest(self) -> dict[str, Any]:
        path = self.partial / MANIFEST
        if not path.exists():
            return {"signature": self.signature, "units": {}}
        manifest = json.loads(path.read_text())
        if manifest.get("signature") != self.signature:
            raise FormatError(f"{path}: the interrupted run used different settings "
                              f"({manifest.get('signature')}); cannot resume with {self.signature}")
        for unit, entry in manifest["units"].items():
            if not (self.partial / entry["file"]).exists():
                raise FormatError(f"{self.partial / entry['file']}: shard of finished unit {unit!r} is missing")
        return manifest

    def is_done(self, unit: str) -> bool:
        return unit in self.manifest["units"]

    def unit_info(self, unit: str) -> dict[str, Any]:
        return self.manifest["units"][unit].get("info", {})

    def read_unit(self, unit: str) -> dict[str, torch.Tensor]:
        """The tensors of a finished unit, as written (``--resume`` replays finished blocks from them)."""
        from safetensors.torch import load_file

        return load_file(str(self.partial / self.manifest["units"][unit]["file"]))

    def _save_shard(self, file: str, tensors: dict[str, torch.Tensor]) -> None:
        cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        write_atomic(self.partial / file, lambda tmp: save_file(cpu, tmp, metadata={"format": "pt"}))

    def write_unit(self, unit: str, tensors: dict[str, torch.Tensor], info: dict | None = None) -> None:
        """Save one unit's tensors as a shard, then record it as finished."""
        file = UNIT_FILE.format(unit)
        self._save_shard(file, tensors)
        self.manifest["units"][unit] = {"file": file, "tensors": sorted(tensors), "info": info or {}}
        write_json_atomic(self.partial / MANIFEST, self.manifest)

    def save_stage(self, stage: str, tensors: dict[str, torch.Tensor], info: dict | None = None) -> None:
        """Keep a whole-model stage's result (e.g. tuned scales) across a crash; not part of the checkpoint."""
        file = f"stage-{stage}.safetensors"
        self._save_shard(file, tensors)
        self.manifest.setdefault("stages", {})[stage] = {"file": file, "info": info or {}}
        write_json_atomic(self.partial / MANIFEST, self.manifest)

    def _stage_entry(self, stage: str) -> dict[str, Any] | None:
        return self.manifest.get("stages", {}).get(stage)

    def stage_info(self, stage: str) -> dict[str, Any] | None:
        """The info a finished stage was saved with, or None."""
        entry = self._stage_entry(stage)
        return None if entry is None else entry["info"]

    def read_stage(self, stage: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """A saved stage's tensors and info, or None if it never finished."""
        from safetensors.torch import load_file

        entry = self._stage_entry(stage)
        if entry is None:
            return None
        path = self.partial / entry["file"]
        if not path.exists():
            raise FormatError(f"{path}: file of finished stage {stage!r} is missing")
        return load_file(str(path)), entry["info"]

    def finalize(self, config: dict[str, Any], auxiliary_files: list[Path], extra_json: dict[str, Any]) -> Path:
        """Write the index, config and side files, then rename ``.partial`` to the output directory."""
        self._remove_temporaries()
        for entry in self.manifest.get("stages", {}).values():
            (self.partial / entry["file"]).unlink(missing_ok=True)
        weight_map: dict[str, str] = {}
        total = 0
        for entry in self.manifest["units"].values():
            for name in entry["tensors"]:
                if name in weight_map:
                    raise FormatError(f"tensor {name!r} written twice ({weight_map[name]}, {entry['file']})")
                weight_map[name] = entry["file"]
            total += (self.partial / entry["file"]).stat().st_size
        write_json_atomic(self.partial / "model.safetensors.index.json",
                          {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
        write_json_atomic(self.partial / "config.json", config)
        for src in auxiliary_files:
            shutil.copy2(src, self.partial / src.name)
        for name, data in extra_json.items():
            write_json_atomic(self.partial / name, data)
        (self.partial / MANIFEST).unlink()
        os.replace(self.partial, self.output_dir)
        return self.output_dir
