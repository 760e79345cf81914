"""File helpers shared by every stage: atomic writes, content hashes, code version."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def stable_json(obj: Any) -> str:
    """Serialise ``obj`` to canonical JSON (sorted keys, no whitespace) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_json(obj: Any) -> str:
    """Hex sha256 of the canonical JSON of ``obj``."""
    return sha256_bytes(stable_json(obj).encode())


def combine_hashes(parts: Iterable[str]) -> str:
    """Hash an ordered sequence of hex digests (or any strings) into one digest."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


def code_version(*modules: str) -> str:
    """A digest of the source files of the named modules plus the package version.

    Cache keys include it so that a change in the code that produced an output
    invalidates that output. Modules are located without importing them, so a cache
    hit does not pay for importing heavy dependencies.
    """
    import importlib.util

    from sentio import __version__

    parts = [__version__]
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not Path(spec.origin).is_file():
            raise ValueError(f"code_version: cannot find the source of module {name!r}")
        parts.append(sha256_file(spec.origin))
    return combine_hashes(parts)[:16]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    Readers never see a half-written file: either the old content or the new one.
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:  # the bytes reach the disk before the rename
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_feather_atomic(path: str | os.PathLike[str], frame: pl.DataFrame) -> Path:
    """Atomically write a polars frame as Feather v2 (Arrow IPC, zstd-compressed)."""
    return atomic_write(path, lambda tmp: frame.write_ipc(tmp, compression="zstd"))


FEATHER_EXTENSIONS = (".feather", ".arrow", ".ipc")


def feather_output(path: str | os.PathLike[str]) -> Path:
    """An absolute output path for a feather file, or a :class:`DataError` saying why not."""
    from sentio.errors import DataError

    out = Path(path).expanduser().resolve()
    if out.is_dir():
        raise DataError(
            f"{out}: is a folder; give the output file's name (e.g. {out / 'bars.feather'})"
        )
    if out.suffix.lower() not in FEATHER_EXTENSIONS:
        raise DataError(
            f"{out}: the output is a feather file; name it with one of {', '.join(FEATHER_EXTENSIONS)}"
        )
    return out


def sidecar(path: str | os.PathLike[str], suffix: str) -> Path:
    """The path of a file that belongs to ``path``: ``bars.feather`` -> ``bars.<suffix>``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.{suffix}")
