"""`brewer convert`: the one-time conversion of a checkpoint's pickled weights (pytorch_model.bin or
its shards) to safetensors, run only on the user's explicit request. brewer loads safetensors only
(brewer_cli/models.py): unpickling a file can run any code it holds. Here the pickles are read
with `torch.load(weights_only=True)`, whose unpickler builds tensors, dicts, lists and numbers and
refuses every other object, so a file that holds more than tensors is refused, never run."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from brewer_cli.errors import CheckpointError
from brewer_cli.models import pickled_weight_files

# transformers' index of sharded pickles: {"weight_map": {tensor name: shard file}}.
PICKLED_INDEX = "pytorch_model.bin.index.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Files that are pickles whatever their name says; never copied into a converted checkpoint.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


@dataclass
class Conversion:
    """What `convert_checkpoint` did: the files written, copied and removed."""

    output: Path
    written: list[Path] = field(default_factory=list)
    tensors: int = 0
    copied: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    kept_pickles: list[Path] = field(default_factory=list)


def convert_checkpoint(directory: Path, output: Path | None = None, remove_pickles: bool = False) -> Conversion:
    """Write the pickled weights of `directory` as safetensors into `output` (default: the same
    directory), copy its config and tokenizer files there, and verify every written tensor
    against the one read. The pickles stay unless `remove_pickles`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: no such directory — give the checkpoint directory that holds pytorch_model.bin (or its shards)"
        )
    pickles = _pickled_shards(directory)
    target = Path(output) if output is not None else directory
    existing = sorted(target.glob("*.safetensors")) if target.is_dir() else []
    if existing:
        raise CheckpointError(
            f"{target} already holds safetensors weights ({', '.join(path.name for path in existing[:3])}) — nothing "
            f"converted. brewer loads those as they are; to convert again, remove them or give --output another directory"
        )
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"--output {target}: a file, not a directory — give a directory for the converted checkpoint")
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)

    result = Conversion(output=target)
    names = _safetensors_names(len(pickles))
    temporary: list[tuple[Path, Path]] = []
    weight_map: dict[str, str] = {}
    total_size = 0
    try:
        for source, name in zip(pickles, names):
            state = _read_tensors(source)
            final = target / name
            partial = target / f"{name}.tmp"
            temporary.append((partial, final))
            save_file(_unshared(state), str(partial), metadata={"format": "pt"})
            _verify(partial, state, source)
            weight_map.update(dict.fromkeys(state, name))
            total_size += sum(tensor.numel() * tensor.element_size() for tensor in state.values())
            result.tensors += len(state)
            del state
        if len(pickles) > 1:
            index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
            partial = target / f"{SAFETENSORS_INDEX}.tmp"
            partial.write_text(json.dumps(index, indent=2) + "\n")
            temporary.append((partial, target / SAFETENSORS_INDEX))
    except BaseException:
        # Nothing half-written is left behind: a later load must not find a partial checkpoint.
        for partial, _ in temporary:
            partial.unlink(missing_ok=True)
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    for partial, final in temporary:
        partial.replace(final)
        result.written.append(final)

    if target.resolve() != directory.resolve():
        result.copied = _copy_companions(directory, target)
    converted = [*pickles, *([directory / PICKLED_INDEX] if (directory / PICKLED_INDEX).is_file() else [])]
    if remove_pickles:
        for path in converted:
            path.unlink()
        result.removed = converted
    else:
        result.kept_pickles = converted
    return result


def _pickled_shards(directory: Path) -> list[Path]:
    """The pickled weight files, in the order transformers' index gives them when there is one."""
    index = directory / PICKLED_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(
                f"{index}: not a transformers weight index ({type(error).__name__}: {error}) — it should map each "
                f'tensor name to its shard file under "weight_map"'
            ) from None
        missing = [name for name in shards if not (directory / name).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are not in {directory}: {', '.join(missing[:3])} — copy them there")
        return [directory / name for name in shards]
    pickles = pickled_weight_files(directory)
    if not pickles:
        present = sorted(directory.glob("*.safetensors"))
        already = f"; it already holds safetensors weights ({present[0].name}), which brewer loads as they are" if present else ""
        raise CheckpointError(
            f"{directory} holds no pickled weights (pytorch_model.bin or its shards) — nothing to convert{already}"
        )
    return pickles


def _safetensors_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{number:05d}-of-{count:05d}.safetensors" for number in range(1, count + 1)]


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict (tensor name → tensor) from a pickle, through the weights-only unpickler."""
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol 4": the unpickler says what it may not support; a refusal is raised.
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds more than tensors — torch.load(weights_only=True) refused it ({_refusal_reason(error)}) — "
            f"and brewer will not load it: unpickling it could run code. Re-export the weights where you trust the "
            f"file, with save_pretrained(…, safe_serialization=True)"
        ) from None
    except Exception as error:
        raise CheckpointError(
            f"{path}: could not be read as a PyTorch weights file ({type(error).__name__}: {str(error).strip()[:200]}) — "
            f"is it complete? Download or copy it again"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a state dict (tensor name → tensor) as save_pretrained writes it — "
            f"nothing converted"
        )
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {name!r} holds a {type(value).__name__}, not a tensor — brewer converts a flat state "
                f"dict (tensor name → tensor) as save_pretrained writes it; nothing converted"
            )
    return dict(state)


def _refusal_reason(error: BaseException) -> str:
    """The line of torch's refusal that names what was refused, without its advice to load the
    file with weights_only=False — the one thing not to do with an untrusted file."""
    for line in str(error).splitlines():
        line = line.strip()
        if line and not line.startswith(("Weights only load failed", "Please file an issue", "Check the documentation")):
            return line.rstrip(".")
    return "an object that is not a tensor"


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, each with storage of its own. A pickled state dict keeps tied weights (a
    masked LM's decoder and its word embeddings) as one storage, and views as slices of another
    tensor's storage; safetensors refuses shared storage, so every tensor after the first of a
    storage, and every partial view, is copied. Loading then ties them again as the model says."""
    seen: set[int] = set()
    result: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage()
        whole = (
            tensor.is_contiguous() and tensor.storage_offset() == 0 and storage.nbytes() == tensor.numel() * tensor.element_size()
        )
        if whole and storage.data_ptr() not in seen and tensor.numel() > 0:
            seen.add(storage.data_ptr())
            result[name] = tensor
        else:
            result[name] = tensor.contiguous().clone()
    return result


def _verify(written: Path, state: dict[str, torch.Tensor], source: Path) -> None:
    """Every tensor read back from the safetensors file equals the pickled one, bit for bit."""
    loaded = load_file(str(written))
    different = [name for name, tensor in state.items() if name not in loaded or not _same_bits(loaded[name], tensor)]
    if different or set(loaded) != set(state):
        raise CheckpointError(
            f"{written}: the tensors read back differ from {source} ({', '.join(different[:3]) or 'extra names'}) — "
            f"nothing converted; is the disk full?"
        )


def _same_bits(first: torch.Tensor, second: torch.Tensor) -> bool:
    # Bytes, not values: NaN ≠ NaN would fail a value comparison of a faithful copy.
    if first.dtype != second.dtype or first.shape != second.shape:
        return False
    return torch.equal(first.contiguous().flatten().view(torch.uint8), second.contiguous().flatten().view(torch.uint8))


def _copy_companions(directory: Path, target: Path) -> list[Path]:
    """Config, tokenizer and other plain files of the checkpoint, without pickles or weights."""
    copied = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix.lower() in PICKLE_SUFFIXES or path.suffix == ".safetensors":
            continue
        if path.name in (PICKLED_INDEX, SAFETENSORS_INDEX):
            continue
        shutil.copy2(path, target / path.name)
        copied.append(target / path.name)
    return copied
