"""File helpers shared by every stage: atomic writes, content hashes, code version."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
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


CODE_PACKAGES: tuple[str, ...] = ("sentio", "data_contracts")
"""The project's own top-level packages: the code :func:`imported_modules` follows."""


@functools.cache
def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` of :data:`CODE_PACKAGES` (without importing it)."""
    import importlib.util

    top, _, rest = name.partition(".")
    if top not in CODE_PACKAGES:
        return None
    spec = importlib.util.find_spec(top)  # a top-level lookup imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations)))
    path = base.joinpath(*rest.split(".")) if rest else base
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _imports_in(name: str) -> frozenset[str]:
    """The project modules module ``name`` imports anywhere in its source (module level
    and inside functions, classes, ``if`` / ``try`` blocks): ``import a.b``, ``from a
    import b`` (``a.b`` when it is a module, else ``a``), relative imports resolved. The
    source is parsed whole; only statements are visited (imports are statements), so
    expressions cost nothing."""
    import ast

    path = _module_file(name)
    assert path is not None
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"), str(path))]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            todo.extend(getattr(node, field, ()))
    return frozenset(m for m in found if _module_file(m) is not None)


@functools.cache
def imported_modules(root: str, stop: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every project module (:data:`CODE_PACKAGES`) ``root`` runs: ``root`` and what it
    imports, directly or through other modules, at module level or inside functions.

    Found by reading the sources (``ast``), without importing anything, so a cache key
    built from them (:func:`code_version`) covers the code a stage uses by construction:
    a helper moved to another module cannot fall out of the key. Modules in ``stop`` are
    neither included nor followed (a package that only re-exports). Sorted.

    Raises:
        ValueError: ``root`` is not a project module.
    """
    if _module_file(root) is None:
        raise ValueError(f"imported_modules: {root!r} is not a module of {CODE_PACKAGES}")
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name in stop:
            continue
        seen.add(name)
        todo.extend(_imports_in(name) - seen)
    return tuple(sorted(seen))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says a disk (or quota) is full: ``ENOSPC``/``EDQUOT``.

    Some writers (polars, Arrow) raise a plain ``OSError`` without ``errno`` whose text
    carries the operating system's message; both forms are recognised.
    """
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    return isinstance(exc, OSError) and any(t in str(exc) for t in _DISK_FULL_TEXT)


def disk_full_error(path: str | os.PathLike[str]) -> Exception:
    """The one-line :class:`~sentio.errors.ResourceError` for a full disk while writing ``path``."""
    from sentio.errors import ResourceError

    where = Path(path)
    return ResourceError(
        f"{where}: no space left on the device while writing it; free space there (or point "
        "paths.workdir at a larger disk) and run again"
    )


def _fsync_best_effort(path: str | os.PathLike[str]) -> None:
    """fsync ``path`` (a file or a folder) when it can be opened for reading and synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make the entries of ``folder`` (a rename into it) durable: fsync the folder itself.

    Best effort: where a folder cannot be opened or synced (some platforms and network
    file systems) the rename stands as the file system keeps it.
    """
    _fsync_best_effort(folder)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (and ``folder``), deepest first; best
    effort, as :func:`fsync_dir` (a file that cannot be opened for reading is skipped)."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                _fsync_best_effort(path)
        fsync_dir(root)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    Readers never see a half-written file: either the old content or the new one. The
    bytes and then the rename are synced (the file, then its folder), so once this
    returns a crash or power loss leaves the new content. On an exception the temporary file is removed and ``path`` is left untouched; a
    full disk becomes a :class:`~sentio.errors.ResourceError` naming ``path``.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(target) from None
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:  # the bytes reach the disk before the rename
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        fsync_dir(target.parent)  # and the rename reaches it too
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(target) from None
        raise


@contextmanager
def staged_folder(final: str | os.PathLike[str], *, staging: str | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside ``final``; move it onto ``final`` whole on success.

    Readers see either no folder, the previous one, or the complete new one: never a
    folder being written. Every file in it, the folder and the rename are synced before
    this returns (a crash or power loss leaves the complete new folder or none). An existing ``final`` (a damaged earlier result) is replaced.
    On an exception the staging folder and everything in it are removed (a full disk
    becomes a :class:`~sentio.errors.ResourceError` naming ``final``).

    Args:
        final: the folder to create.
        staging: a fixed name for the staging folder (beside ``final``) for work that
            resumes (training checkpoints): it is reused as found and kept when the work
            fails, except when a resource ran out (then it is removed: no partial files).
            By default a fresh hidden folder is used and always removed on failure.
    """
    target = Path(final)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if staging is None:
            tmp = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            )
        else:
            tmp = target.parent / staging
            tmp.mkdir(exist_ok=True)
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(target) from None
        raise
    try:
        yield tmp
        _fsync_tree(tmp)  # every file reaches the disk before the folder is renamed
        if target.exists():
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            fsync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
            fsync_dir(target.parent)
    except BaseException as exc:
        from sentio.errors import ResourceError

        exhausted = is_disk_full(exc) or isinstance(exc, ResourceError)
        if staging is None or exhausted:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full_error(target) from None
        raise


def rebase_paths(obj: Any, old: str | os.PathLike[str], new: str | os.PathLike[str]) -> Any:
    """A copy of ``obj`` (JSON-like) with every path under ``old`` moved under ``new``.

    Strings (and mapping keys) equal to ``old`` or starting with ``old`` plus a path
    separator are rewritten; everything else is returned as it is. Used when a staged
    folder is renamed into place and when a working directory has moved.
    """
    src, dst = str(old), str(new)
    if src == dst:
        return obj

    def move(value: Any) -> Any:
        if isinstance(value, str):
            if value == src:
                return dst
            if value.startswith(src + os.sep):
                return dst + value[len(src) :]
            return value
        if isinstance(value, dict):
            return {move(k): move(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(move(v) for v in value)
        return value

    return move(obj)


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
