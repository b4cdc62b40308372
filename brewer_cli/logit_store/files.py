"""The store on disk: Parquet shards written as the capture goes, a manifest written last, and
the reader a run uses to turn a batch's example indices into `SparseLogits`.

Layout of DIR (written as DIR.partial and renamed when complete, so a capture that stops never
leaves a directory that looks finished; a reader refuses a directory without manifest.json):

    manifest.json             what the values depend on and how they are stored (`Manifest`)
    shard-00000.parquet …     one row per training example, at most `rows_per_shard` rows each
    tokenizer/                the teacher's tokenizer (a run reading the store tokenizes with it)

A row: `index` (int64, the example's index in the tokenized training split), `positions` (int32:
the counted positions, in the frame of the task's KD logits — for causal LM position t predicts
token t+1), and per counted position `ids` (k × int32), `log_probs` (k × float16 or float32, log p_T
at the capture temperature, largest first) and `tail_log_mass` (float32), each as a flat list.
Row groups are small (`rows_per_group`) so that a random batch decodes little; the reader keeps the
decoded groups in a cache bounded in bytes (all of them, when the store fits).
"""

from __future__ import annotations

import json
import math
import shutil
from collections import OrderedDict
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from brewer_cli.errors import ModelError
from brewer_cli.features import SparseLogits

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIRECTORY = "tokenizer"
# Written first into DIR.partial: marks a directory brewer capture may clear when it starts again.
CAPTURING_MARKER = "CAPTURING"
LOG_PROB_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
ROWS_PER_SHARD = 4096
ROWS_PER_GROUP = 32
READ_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class Manifest:
    """manifest.json. `teacher`: source (path or hub id), revision, weights hash; `data`: examples,
    counted tokens, task settings; sizes in bytes of the shards alone."""

    teacher: dict[str, Any]
    tokenizer_hash: str
    vocabulary_size: int
    temperature: float
    k: int
    log_prob_dtype: str
    data_fingerprint: str
    data: dict[str, Any]
    brewer_version: str
    bytes: int
    bytes_per_token: float
    shards: tuple[dict[str, Any], ...]
    format: int = FORMAT_VERSION
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "shards": list(self.shards)}, indent=2)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """manifest.json; `UnreadableStore` when it is missing, not JSON, of another format or
        without the fields this format has."""
        try:
            values = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise UnreadableStore(f"its {MANIFEST} cannot be read ({error})") from error
        if not isinstance(values, dict):
            raise UnreadableStore(f"its {MANIFEST} is not a store manifest (a JSON object)")
        # Checked first: another format's fields may mean other things even where the names agree.
        found = values.get("format")
        if found != FORMAT_VERSION:
            raise UnreadableStore(
                f"its {MANIFEST} has format {found!r}, and this version of brewer reads format {FORMAT_VERSION}"
            )
        known = {name for name in cls.__dataclass_fields__}
        missing = sorted(name for name, spec in cls.__dataclass_fields__.items() if name not in values and _required(spec))
        if missing:
            raise UnreadableStore(f"its {MANIFEST} lacks {', '.join(missing)}")
        values = {name: value for name, value in values.items() if name in known}
        values["shards"] = tuple(values.get("shards", ()))
        if not all(isinstance(shard, dict) and isinstance(shard.get("file"), str) for shard in values["shards"]):
            raise UnreadableStore(f"its {MANIFEST} lists shards without a file name")
        return cls(**values)


class UnreadableStore(Exception):
    """A store directory whose manifest or shards cannot be read; the message says what, and
    `open_store` turns it into the user's error (the recipe field and the fix)."""


def _required(spec: Any) -> bool:
    return spec.default is MISSING and spec.default_factory is MISSING


def _schema(log_prob_dtype: str) -> pa.Schema:
    return pa.schema(
        [
            ("index", pa.int64()),
            ("positions", pa.list_(pa.int32())),
            ("ids", pa.list_(pa.int32())),
            ("log_probs", pa.list_(LOG_PROB_DTYPES[log_prob_dtype])),
            ("tail_log_mass", pa.list_(pa.float32())),
        ]
    )


def partial_directory(directory: Path) -> Path:
    return directory.with_name(directory.name + ".partial")


class StoreWriter:
    """Writes rows as they come: a row group every `rows_per_group` rows, a new shard every
    `rows_per_shard`; memory holds one row group. `finish` writes the manifest and renames."""

    def __init__(
        self,
        directory: Path,
        k: int,
        log_prob_dtype: str = "float16",
        rows_per_shard: int = ROWS_PER_SHARD,
        rows_per_group: int = ROWS_PER_GROUP,
    ):
        self.directory = Path(directory)
        self.partial = partial_directory(self.directory)
        self.k = k
        self.log_prob_dtype = log_prob_dtype
        self.schema = _schema(log_prob_dtype)
        self.rows_per_shard = rows_per_shard
        self.rows_per_group = rows_per_group
        self.shards: list[dict[str, Any]] = []
        self.buffer: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.writer: pq.ParquetWriter | None = None
        self.rows_in_shard = 0
        self.counted_tokens = 0
        if self.partial.exists():
            # Only a directory an earlier capture started (it holds the marker) is cleared.
            if not (self.partial / CAPTURING_MARKER).is_file():
                raise FileExistsError(str(self.partial))
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        (self.partial / CAPTURING_MARKER).write_text("brewer capture writes this store; it is not complete yet\n")

    def add(self, index: int, positions: np.ndarray, ids: np.ndarray, log_probs: np.ndarray, tail: np.ndarray) -> None:
        """One example: `positions` (n,), `ids` and `log_probs` (n, k), `tail` (n,)."""
        self.buffer.append((index, positions, ids, log_probs, tail))
        self.counted_tokens += len(positions)
        if len(self.buffer) >= self.rows_per_group or self.rows_in_shard + len(self.buffer) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            name = f"shard-{len(self.shards):05d}.parquet"
            self.writer = pq.ParquetWriter(self.partial / name, self.schema, compression="zstd")
            self.shards.append({"file": name, "rows": 0})

        def listed(arrays: list[np.ndarray], dtype: Any) -> pa.Array:
            lengths = np.fromiter((array.size for array in arrays), dtype=np.int32, count=len(arrays))
            offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            values = np.concatenate([array.reshape(-1) for array in arrays]) if arrays else np.zeros(0)
            return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(dtype, copy=False)))

        numpy_dtype = np.float16 if self.log_prob_dtype == "float16" else np.float32
        rows = self.buffer
        table = pa.Table.from_arrays(
            [
                pa.array([row[0] for row in rows], pa.int64()),
                listed([row[1] for row in rows], np.int32),
                listed([row[2] for row in rows], np.int32),
                listed([row[3] for row in rows], numpy_dtype),
                listed([row[4] for row in rows], np.float32),
            ],
            schema=self.schema,
        )
        self.writer.write_table(table)
        self.shards[-1]["rows"] += len(rows)
        self.rows_in_shard += len(rows)
        self.buffer = []
        if self.rows_in_shard >= self.rows_per_shard:
            self.writer.close()
            self.writer = None
            self.rows_in_shard = 0

    def save_tokenizer(self, tokenizer: Any) -> None:
        tokenizer.save_pretrained(self.partial / TOKENIZER_DIRECTORY)

    def finish(self, **fields: Any) -> Manifest:
        """Close the last shard, write manifest.json (`fields`: the Manifest's other fields) and
        rename DIR.partial to DIR — the store is complete only from this rename on."""
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        size = sum((self.partial / shard["file"]).stat().st_size for shard in self.shards)
        manifest = Manifest(
            k=self.k,
            log_prob_dtype=self.log_prob_dtype,
            bytes=size,
            bytes_per_token=size / max(self.counted_tokens, 1),
            shards=tuple(self.shards),
            **fields,
        )
        (self.partial / MANIFEST).write_text(manifest.to_json())
        (self.partial / CAPTURING_MARKER).unlink()
        self.partial.rename(self.directory)
        return manifest


@dataclass(frozen=True)
class _Group:
    """One decoded row group: its rows' flat values and where each row starts."""

    rows: dict[int, int]  # example index → row within the group
    columns: dict[str, tuple[np.ndarray, np.ndarray]]  # name → (offsets, values)
    nbytes: int


class LogitStore:
    """A complete store, opened for reading (`open_store` checks it exists and is complete)."""

    def __init__(self, directory: Path, cache_bytes: int = READ_CACHE_BYTES):
        self.directory = Path(directory)
        self.manifest = Manifest.read(self.directory)
        self.cache_bytes = cache_bytes
        self.files: list[pq.ParquetFile] = []
        # example index → (shard, row group); read from the `index` column alone.
        self.where: dict[int, tuple[int, int]] = {}
        for shard, entry in enumerate(self.manifest.shards):
            try:
                parquet = pq.ParquetFile(self.directory / entry["file"])
                indices = parquet.read(columns=["index"]).column(0).to_numpy()
            except (OSError, pa.ArrowException) as error:
                raise UnreadableStore(f"its shard {entry['file']} is missing or damaged ({error})") from error
            if parquet.schema_arrow.names != _schema(self.manifest.log_prob_dtype).names:
                raise UnreadableStore(f"its shard {entry['file']} has columns {parquet.schema_arrow.names}, not a store's")
            self.files.append(parquet)
            sizes = [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)]
            groups = np.repeat(np.arange(len(sizes)), sizes)
            self.where.update(zip(indices.tolist(), ((shard, group) for group in groups.tolist())))
        self.cache: OrderedDict[tuple[int, int], _Group] = OrderedDict()
        self.cached_bytes = 0

    def __len__(self) -> int:
        return len(self.where)

    def _group(self, key: tuple[int, int]) -> _Group:
        found = self.cache.get(key)
        if found is not None:
            self.cache.move_to_end(key)
            return found
        try:
            table = self.files[key[0]].read_row_group(key[1])
        except (OSError, pa.ArrowException) as error:
            # Opening read the shards' footers and indices; a page damaged since fails here, mid-run.
            name = self.manifest.shards[key[0]]["file"]
            raise ModelError(
                f"{self.directory / name}: row group {key[1]} of the teacher store cannot be read ({error}) — the "
                f"store was damaged after capture; re-run brewer capture to write it again"
            ) from error
        columns = {}
        for name in ("positions", "ids", "log_probs", "tail_log_mass"):
            array = table.column(name).combine_chunks()
            columns[name] = (array.offsets.to_numpy(), array.values.to_numpy(zero_copy_only=False))
        rows = {index: row for row, index in enumerate(table.column("index").to_pylist())}
        group = _Group(rows, columns, sum(values.nbytes + offsets.nbytes for offsets, values in columns.values()))
        self.cache[key] = group
        self.cached_bytes += group.nbytes
        while self.cached_bytes > self.cache_bytes and len(self.cache) > 1:
            _, dropped = self.cache.popitem(last=False)
            self.cached_bytes -= dropped.nbytes
        return group

    def example(self, index: int) -> dict[str, np.ndarray]:
        """Example `index`'s positions (n,), ids and log_probs (n, k), tail_log_mass (n,)."""
        if index not in self.where:
            raise KeyError(index)
        group = self._group(self.where[index])
        row = group.rows[index]
        k = self.manifest.k
        values = {}
        for name, (offsets, flat) in group.columns.items():
            piece = flat[offsets[row] : offsets[row + 1]]
            values[name] = piece.reshape(-1, k) if name in ("ids", "log_probs") else piece
        return values

    def sparse_logits(self, indices: torch.Tensor, mask: torch.Tensor, tail: str) -> SparseLogits:
        """The teacher's distributions for a batch: `indices` (B,) example indices, `mask` (B, F)
        the counted positions of the task's KD logits. Positions not counted get a harmless
        uniform distribution over k distinct ids (the losses mask them out)."""
        size, frame = mask.shape
        k = self.manifest.k
        ids = torch.arange(k, dtype=torch.long).expand(size, frame, k).clone()
        log_probs = torch.full((size, frame, k), -math.log(k), dtype=torch.float32)
        tail_log_mass = torch.full((size, frame), float("-inf"), dtype=torch.float32)
        counted = mask.detach().to("cpu", torch.bool)
        for row, index in enumerate(indices.tolist()):
            values = self.example(index)
            positions = torch.from_numpy(values["positions"].astype(np.int64))
            expected = counted[row].nonzero().squeeze(-1)
            if not torch.equal(positions, expected):
                raise RuntimeError(
                    f"{self.directory}: example {index}: the store holds the teacher's distributions at "
                    f"{len(positions)} positions, but the batch counts {len(expected)} others — the store was "
                    f"captured on other data; run brewer capture again"
                )
            ids[row, positions] = torch.from_numpy(values["ids"].astype(np.int64))
            log_probs[row, positions] = torch.from_numpy(values["log_probs"].astype(np.float32))
            tail_log_mass[row, positions] = torch.from_numpy(values["tail_log_mass"].astype(np.float32))
        device = mask.device
        return SparseLogits(
            ids=ids.to(device),
            log_probs=log_probs.to(device),
            tail_log_mass=tail_log_mass.to(device),
            vocabulary_size=self.manifest.vocabulary_size,
            tail=tail,
        )
