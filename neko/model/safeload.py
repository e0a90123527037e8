"""Prove a checkpoint holds data, not code, before any library unpickles it.

Accelerate loads its own ``.bin``/``.pkl`` files weights-only, but other readers a resume reaches
do not: torch.distributed.checkpoint (FSDP's SHARDED_STATE_DICT) reads ``.metadata`` with
``pickle.load`` and non-tensor entries of its ``.distcp`` shards with
``torch.load(weights_only=False)``; DeepSpeed loads its ``*_states.pt`` with
``weights_only=False``. Any of them runs whatever a planted file says. So before
``accelerator.load_state`` every file of the checkpoint that holds a pickle (a raw pickle, a
torch zip archive, or a slice of a ``.distcp`` shard that the ``.metadata`` points at) is walked
opcode by opcode, never executed, and refused unless every class or function it names is on the
allowlist below: tensor rebuilders, storages, dtypes, plain containers, numpy arrays (RNG
states), DCP's metadata records and the few DeepSpeed records its checkpoints hold. Objects built
from those cannot run anything else.

A file that is neither JSON, safetensors, a torch zip archive nor a single complete pickle (e.g.
torch's legacy format, a pickle followed by raw bytes) is refused too: it cannot be checked.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "DamagedFile",
    "UnsafeCheckpoint",
    "check_checkpoint_dir",
    "check_pickle_bytes",
    "UnsafeWeights",
    "weights_only_errors",
]

_REBUILDERS = (
    "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter "
    "_rebuild_parameter_with_state _rebuild_sparse_tensor _rebuild_meta_tensor_no_storage"
).split()
_DTYPES = (
    "float64 float32 float16 bfloat16 complex64 complex128 int64 int32 int16 int8 uint8 uint16 "
    "uint32 uint64 bool float8_e4m3fn float8_e5m2 double float half long int short cfloat cdouble"
).split()
_STORAGES = [
    f"{t}Storage"
    for t in "Float Double Half BFloat16 Long Int Short Char Byte Bool ComplexFloat ComplexDouble Untyped".split()
]
_ALLOWED: set[tuple[str, str]] = (
    {("torch", n) for n in _DTYPES + _STORAGES + ["Size", "device", "strided", "contiguous_format"]}
    | {("torch._utils", n) for n in _REBUILDERS}
    | {
        ("torch.storage", "UntypedStorage"),
        ("torch.serialization", "_get_layout"),
        ("torch", "channels_last"),
        ("torch", "preserve_format"),
        ("torch", "sparse_coo"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("builtins", "tuple"),
        ("builtins", "list"),
        ("builtins", "dict"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("_codecs", "encode"),  # protocol 2 writes bytes as _codecs.encode(str, "latin1")
        # numpy arrays (Accelerate's RNG states hold numpy's generator state)
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # torch.distributed.checkpoint (FSDP SHARDED_STATE_DICT) records
        *(
            ("torch.distributed.checkpoint.metadata", n)
            for n in (
                "Metadata",
                "TensorStorageMetadata",
                "BytesStorageMetadata",
                "ChunkStorageMetadata",
                "TensorProperties",
                "MetadataIndex",
                "StorageMeta",
                "_MEM_FORMAT_ENCODING",  # an Enum: rebuilt by value
            )
        ),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
        ("pathlib", "PurePosixPath"),
        # DeepSpeed's records (its checkpoints pickle these beside the tensors)
        ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
        ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
        ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
        ("deepspeed.utils.tensor_fragment", "fragment_address"),
        ("deepspeed.checkpoint.constants", "ZERO_STAGE"),
    }
)
_ALLOWED_MODULE_PREFIXES = ("numpy.dtypes",)  # numpy >= 1.25 pickles dtypes as numpy.dtypes.<X>DType

_STRINGS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_UNCHECKABLE = {"EXT1", "EXT2", "EXT4"}  # the copyreg extension registry: names we cannot see


class UnsafeCheckpoint(ValueError):
    """A checkpoint file that names code outside the allowlist, or that cannot be checked."""


class UnsafeWeights(ValueError):
    """A model weights file that is not tensors only (refused by a weights-only load)."""


class DamagedFile(UnsafeCheckpoint):
    """A file that is not even a readable pickle or archive (truncated, garbled)."""


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """The name the unpickler will really import: protocols 0-2 write Python 2 names
    (``__builtin__.exec``) that it maps to Python 3 ones (fix_imports)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _allowed(module: str, name: str) -> bool:
    return (module, name) in _ALLOWED or module.startswith(_ALLOWED_MODULE_PREFIXES)


def check_pickle_bytes(data: bytes, where: str) -> None:
    """Raise UnsafeCheckpoint unless ``data`` is ONE pickle naming only allowlisted globals.

    Static: the opcodes are read, nothing is built. STACK_GLOBAL takes its module and name from
    the two values just pushed; they are only accepted when those were two string pushes (or memo
    reads of strings) in a row, so no other opcode could have changed the stack between them."""
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # values of the latest consecutive string pushes / memo reads
    end = 0
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in _STRINGS:
                pushed.append(arg if isinstance(arg, str) else None)
                continue
            if name in _GETS:
                pushed.append(memo.get(arg))
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
                continue
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
                continue
            if name in ("GLOBAL", "INST"):
                module, attr = _py3_name(*str(arg).partition(" ")[::2])
                if not _allowed(module, attr):
                    raise UnsafeCheckpoint(f"{where}: names {module}.{attr}")
            elif name == "STACK_GLOBAL":
                if len(pushed) < 2 or not all(isinstance(v, str) for v in pushed[-2:]):
                    raise UnsafeCheckpoint(f"{where}: names a global neko cannot resolve without running it")
                module, attr = _py3_name(pushed[-2], pushed[-1])
                if not _allowed(module, attr):
                    raise UnsafeCheckpoint(f"{where}: names {module}.{attr}")
            elif name in _UNCHECKABLE:
                raise UnsafeCheckpoint(f"{where}: uses the pickle extension registry ({name})")
            elif name == "STOP":
                end = pos + 1
            pushed = []
    except UnsafeCheckpoint:
        raise
    except Exception as e:  # pickletools raises ValueError on truncated or garbled streams
        raise DamagedFile(f"{where}: damaged, not a readable pickle ({type(e).__name__}: {e})") from None
    if end != len(data):  # a second pickle or raw bytes after the first (torch's legacy format)
        raise UnsafeCheckpoint(f"{where}: data after the pickle (legacy or foreign format)")


def _check_torch_zip(src: Any, where: str) -> None:
    """Every pickle record of a torch zip archive, read with torch's own zip reader (the one
    torch.load uses, so no other parser's view of the archive can differ from what gets loaded)."""
    import torch

    try:
        reader = torch._C.PyTorchFileReader(src)
        records = reader.get_all_records()
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise DamagedFile(f"{where}: damaged ({type(e).__name__}: {first})") from None
    pickles = [r for r in records if r.endswith(".pkl")]
    if not pickles:
        raise UnsafeCheckpoint(f"{where}: torch archive without data.pkl")
    for r in pickles:
        check_pickle_bytes(bytes(reader.get_record(r)), f"{where} ({r})")


def _check_blob(data: bytes, where: str) -> None:
    """A torch.save blob (zip) or a raw pickle."""
    if data[:4] == b"PK\x03\x04":
        _check_torch_zip(io.BytesIO(data), where)
    else:
        check_pickle_bytes(data, where)


class _MetadataUnpickler(pickle.Unpickler):
    """Builds a ``.metadata`` already proven by :func:`check_pickle_bytes`; refuses any other name."""

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name):
            raise UnsafeCheckpoint(f"names {module}.{name}")
        return super().find_class(module, name)


def _check_dcp_dir(directory: Path, metadata_files: list[Path]) -> None:
    """A torch.distributed.checkpoint directory: its metadata, then every slice of every shard it
    points at (DCP loads non-tensor slices with weights_only=False)."""
    for meta_path in metadata_files:
        data = meta_path.read_bytes()
        check_pickle_bytes(data, str(meta_path))
        meta = _MetadataUnpickler(io.BytesIO(data)).load()
        storage = getattr(meta, "storage_data", None) or {}
        for info in storage.values():
            rel = getattr(info, "relative_path", None)
            offset, length = getattr(info, "offset", None), getattr(info, "length", None)
            if not isinstance(rel, str) or not isinstance(offset, int) or not isinstance(length, int):
                raise UnsafeCheckpoint(f"{meta_path}: malformed storage record")
            if getattr(info, "transform_descriptors", None):
                raise UnsafeCheckpoint(f"{meta_path}: transformed (e.g. compressed) shards cannot be checked")
            shard = (directory / rel).resolve()
            if shard.parent != directory.resolve():
                raise UnsafeCheckpoint(f"{meta_path}: points outside its directory ({rel})")
            with open(shard, "rb") as f:
                f.seek(offset)
                _check_blob(f.read(length), f"{shard}@{offset}")


def check_checkpoint_dir(path: str | Path) -> None:
    """Raise UnsafeCheckpoint naming the first file of checkpoint ``path`` that could run code.

    Files that are never unpickled (JSON, safetensors, text) are left to their own loaders."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    dcp_dirs: dict[Path, list[Path]] = {}
    for f in files:
        if f.name.endswith(".metadata"):
            dcp_dirs.setdefault(f.parent, []).append(f)
            continue
        if f.suffix == ".distcp":  # checked slice by slice through its directory's metadata
            continue
        with open(f, "rb") as fh:
            head = fh.read(4)
        if head[:4] == b"PK\x03\x04":
            _check_torch_zip(str(f), str(f))
        elif head[:1] == b"\x80" or f.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"):
            check_pickle_bytes(f.read_bytes(), str(f))
    for f in files:
        if f.suffix == ".distcp" and f.parent not in dcp_dirs:
            raise UnsafeCheckpoint(f"{f}: shard without a .metadata beside it")
    for d, metas in dcp_dirs.items():
        _check_dcp_dir(d, metas)


@contextmanager
def weights_only_errors(model_dir: str | Path) -> Iterator[None]:
    """Turn the error of a weights-only load of a pickle-bearing ``.bin`` into one line naming the file.

    transformers loads ``pytorch_model.bin`` with ``torch.load(weights_only=True)``, which refuses
    (never runs) anything but tensors, but its error is a page ending in advice to load the file with
    ``weights_only=False``, i.e. to run it. neko never gives that advice."""
    try:
        yield
    except pickle.UnpicklingError:
        where, why = Path(model_dir), "holds objects other than tensors"
        for f in sorted(Path(model_dir).glob("*.bin")) + sorted(Path(model_dir).glob("*.pt")):
            try:
                with open(f, "rb") as fh:
                    zipped = fh.read(4) == b"PK\x03\x04"
                _check_torch_zip(str(f), str(f)) if zipped else check_pickle_bytes(f.read_bytes(), str(f))
            except UnsafeCheckpoint as e:
                where, why = f, str(e).split(": ", 1)[-1]
                break
        raise UnsafeWeights(
            f"{where}: {why}; neko loads model weights only as tensors and never runs a weights file's "
            "code: use a copy saved as safetensors from a source you trust"
        ) from None
