"""Writing checkpoint files: byte-reproducible safetensors, and a folder replaced in one step.

``write_safetensors`` writes the safetensors layout itself so that the same tensors give the same
bytes in every process: the header's keys, including the metadata's, are sorted (the safetensors
library serializes its metadata map in a per-process random order), and the data follows in a fixed
order (widest dtype first, then by name, which keeps every tensor aligned to its element size).

``write_folder`` writes every file into a new folder beside the target and swaps it into place
(``hatzoo.files.replacing_folder``), so a reader sees either the complete old folder or the complete new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from hatzoo.errors import CheckpointError
from hatzoo.files import replacing_folder

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _raw(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def tensors_id(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of names, dtypes, shapes and bytes of the tensors: the same tensors give the same id."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key]
        digest.update(json.dumps([key, _DTYPES[value.dtype], list(value.shape)]).encode())
        digest.update(_raw(value))
    return digest.hexdigest()


def write_safetensors(tensors: dict[str, torch.Tensor], file: BinaryIO, metadata: dict[str, str]) -> None:
    """Write ``tensors`` in the safetensors format with a sorted header and a fixed data order."""
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for key in order:
        value = tensors[key]
        size = value.numel() * value.element_size()
        header[key] = {
            "dtype": _DTYPES[value.dtype],
            "shape": list(value.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    file.write(struct.pack("<Q", len(text)))
    file.write(text)
    for key in order:
        file.write(_raw(tensors[key]))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """One safetensors file (``write_safetensors``: the same tensors give the same bytes), replaced whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write_safetensors(tensors, f, metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_tensors(path: str | os.PathLike[str], what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(header metadata, every tensor) of one safetensors file; a CheckpointError naming ``what`` when
    it is missing, truncated or not safetensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable {what} file ({error})") from error


def write_folder(target: Path, files: dict[str, bytes | Callable[[BinaryIO], None]]) -> Path:
    """Write ``files`` (name -> bytes or writer) as the folder ``target``, replacing an existing one at once.

    Entries of an existing folder that are not among ``files`` are carried over (hard links).
    """
    with replacing_folder(target) as new:
        for name, write in files.items():
            with open(new / name, "wb") as handle:
                if isinstance(write, bytes):
                    handle.write(write)
                else:
                    write(handle)
                handle.flush()
                os.fsync(handle.fileno())
        if target.is_dir():  # carry over what this save does not write, as hard links
            shutil.copytree(
                target,
                new,
                symlinks=True,
                ignore=lambda folder, names: set(files) if folder == str(target) else (),
                copy_function=_link,
                dirs_exist_ok=True,
            )
    return target


def _link(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)
