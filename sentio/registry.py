"""The model registry: every trained model is a version; one version is the champion.

Layout of a registry root (by default ``<paths.workdir>/registry``)::

    root/
      versions/<version_id>/model.zip       the SB3 model, copied
      versions/<version_id>/config<.ext>    the configuration it was trained with
      versions/<version_id>/manifest.json   everything else (below)
      champion.json                         the champion pointer
      history.jsonl                         one line per promotion / rollback / rejection
      .lock                                 the file lock that serialises pointer changes

**Versions.** :meth:`Registry.register` copies the model and configuration files into a
temporary folder under ``versions/``, writes ``manifest.json`` there and renames the
folder into place, so a version is either complete or absent: on any failure (a full
disk becomes a :class:`~sentio.errors.ResourceError` naming ``versions/``) the temporary
folder is removed and nothing is registered. The version id is
``YYYYMMDDTHHMMSSffffffZ-<8 hex>``: the UTC creation time (so ids sort by age) and
the first 8 hex digits of a hash of the file hashes and the metadata. The manifest holds
``version``, ``created_at`` (ISO-8601 UTC), ``algo`` (``ppo`` / ``maskable_ppo`` /
``sentio_ppo``), ``code_version``, ``metrics``, ``data_hashes`` (data and feature hashes),
``extra``, ``model`` and ``config`` (file names inside the version folder) and ``files``
(file name -> sha256). Versions are immutable once registered.

**The champion pointer.** ``champion.json`` holds ``version``, ``promoted_at``,
``reason``, ``manual`` (promoted by hand, bypassing the gate), ``previous`` (the champion
it replaced, or null) and ``lineage`` (the earlier champions, oldest first, so that
repeated rollbacks walk back in time). Every change -- :meth:`Registry.promote`,
:meth:`Registry.rollback`, :meth:`Registry.promote_if_passes` -- happens under a
``filelock.FileLock`` on ``root/.lock``: read the pointer, decide, write the new pointer
to a temporary file, append one line to ``history.jsonl`` and only then ``os.replace`` the
temporary file onto ``champion.json`` (readers see the old or the new pointer, never half
of one). Both change or neither: when anything fails (a full disk, reported as a
:class:`~sentio.errors.ResourceError` naming the file) the temporary pointer is removed
and the history is cut back to its previous length, so ``champion.json`` and
``history.jsonl`` stay byte-identical. Two processes promoting at once serialise: no lost
update, no torn file.

**The gate.** :func:`gate` checks a candidate's metrics against
:class:`sentio.config.RegistryConfig`:

* ``dsr >= min_dsr`` (deflated Sharpe ratio, a probability);
* ``|max_drawdown| <= max_drawdown`` (a fraction of equity; the sign is ignored);
* when ``must_beat_champion`` and a champion exists: the candidate's out-of-sample
  ``sharpe`` is strictly above the champion's **on the same window** -- the metrics must
  carry ``window_start`` and ``window_end`` and they must be equal. Sharpe ratios on
  different windows are not comparable: the gate then refuses and says so (the rule is
  "re-evaluate the champion on the candidate's window and pass those metrics", which the
  flow can do by calling :func:`gate` itself with fresh champion metrics).

A missing or non-finite metric fails its condition. Every failing condition appears in
``GateDecision.reasons`` with the numbers. :meth:`Registry.promote_if_passes` reads the
champion, runs the gate against *that* champion's metrics and writes the pointer within
one lock (compare-and-swap): the champion compared against is the one replaced. A refusal
is recorded in ``history.jsonl`` (``action: "reject"``) with its reasons.

**Re-evaluating the champion.** ``promote_if_passes(..., evaluate=fn)`` calls
``fn(champion_version_or_None)`` under that same lock and gates the :class:`Comparison`
it returns: the nightly flow's registry stage (:func:`sentio.stages.registry.registry_stage`)
backtests the candidate and the champion on the candidate's out-of-sample window
restricted to bars after the champion's training end plus the embargo, so neither Sharpe
ratio is measured on data its model was trained on. A ``Comparison.refusal`` (too few
such bars, say) fails the gate with that reason. Promotions and rejections made this way
record the window and both sets of metrics in ``history.jsonl``.

**Versions of the nightly flow.** The registry stage registers every (fold, seed) model
with ``model.zip``, ``config.yaml`` (the full configuration it was trained with), and,
where used, ``normaliser.json`` and ``regime_model.json`` (the fold's normaliser and
regime model); ``extra`` holds ``fold``, ``seed``, ``train_key``, ``run``,
``train_start`` / ``train_end``, ``window_start`` / ``window_end`` and
``feature_columns``, which is what :mod:`sentio.live` needs to rebuild the market.

**Idempotent registration.** :meth:`Registry.register_once` registers a trained model
unless a version with the same ``extra.train_key`` (the train stage's content key) and
the same model sha256 exists already (:meth:`Registry.find`), under the lock: re-running
the nightly flow on unchanged inputs creates no new version.

**Loading.** :meth:`Registry.load_model` reads every file of the manifest, checks its
sha256 and only then unpickles the model -- from the bytes that were hashed (no window
between the check and the load) -- with the class named by ``algo``. A mismatch raises
:class:`IntegrityError` (a :class:`RegistryError`) naming the file and both hashes.

**Integrity.** The same check (:meth:`Registry.verify`) guards every change of the
champion: :meth:`Registry.promote` and :meth:`Registry.rollback` refuse a damaged target
(a file modified or missing) with an :class:`IntegrityError` before the pointer or the
history is touched, and :meth:`Registry.promote_if_passes` refuses a damaged candidate
(recorded as a rejection with that reason), so a damaged version never becomes the
champion. :meth:`Registry.integrity` reports a version's state (:class:`Integrity`:
``ok``, ``damaged`` or ``missing`` and the file) without raising.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from sentio.config import RegistryConfig, SentioConfig
from sentio.errors import ResourceError, SentioError
from sentio.io import (
    atomic_path,
    combine_hashes,
    disk_full_error,
    fsync_dir,
    hash_json,
    is_disk_full,
    sha256_bytes,
    sha256_file,
    write_json_atomic,
)
from sentio.text import format_number
from sentio.times import iso_z, now_utc

__all__ = [
    "ALGOS",
    "Comparison",
    "GateDecision",
    "Integrity",
    "IntegrityError",
    "Registry",
    "RegistryError",
    "Version",
    "decision_markdown",
    "default_root",
    "gate",
    "versions_table",
]

ALGOS: dict[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3", "PPO"),
    "maskable_ppo": ("sb3_contrib", "MaskablePPO"),
    "sentio_ppo": ("sentio.agents.sentio_ppo", "SentioPPO"),
}
"""``algo`` name -> (module, class) of the SB3 algorithm that loads its models."""

_VERSION_RE = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}$")
MANIFEST = "manifest.json"
CHAMPION = "champion.json"
HISTORY = "history.jsonl"
LOCK = ".lock"


class RegistryError(SentioError):
    """The registry cannot do what was asked: unknown version, tampered file, no champion."""

    exit_code = 6


class IntegrityError(RegistryError):
    """A file of a version differs from its manifest (``damaged``) or is ``missing``.

    ``file`` names the file inside the version folder (``manifest.json`` when the
    manifest itself cannot be trusted); ``problem`` is ``"damaged"`` or ``"missing"``.
    """

    def __init__(self, message: str, *, file: str = MANIFEST, problem: str = "damaged") -> None:
        # defaults: an unpickled error is rebuilt from its message, then its __dict__
        super().__init__(message)
        self.file = file
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class Integrity:
    """The state of a version's files against the sha256 recorded in its manifest.

    ``status``: ``"ok"``, ``"damaged"`` (a file's bytes changed, or the manifest cannot
    be trusted) or ``"missing"`` (a file is gone); ``file``: the first file found
    damaged or missing; ``detail``: the one-line message of :meth:`Registry.verify`.
    """

    status: str
    file: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every file matches its recorded sha256."""
        return self.status == "ok"

    def label(self) -> str:
        """Short form for a table: ``ok``, ``damaged: model.zip``, ``missing: config.yaml``."""
        return self.status if self.file is None else f"{self.status}: {self.file}"

    def to_json(self) -> dict[str, str | None]:
        """``status``, ``file`` and ``detail`` as a JSON-ready dict."""
        return dataclasses.asdict(self)


def default_root(cfg: SentioConfig) -> Path:
    """The registry root of a configuration: ``<paths.workdir>/registry``."""
    return Path(cfg.paths.workdir) / "registry"


def _copy_synced(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` and flush its bytes to the disk (a delayed ENOSPC shows here)."""
    shutil.copyfile(src, dst)
    with open(dst, "rb") as fh:
        os.fsync(fh.fileno())


@dataclasses.dataclass(frozen=True)
class Version:
    """One registered model: its folder and its manifest."""

    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def model_path(self) -> Path:
        """The stored model file."""
        return self.path / str(self.manifest["model"])

    @property
    def config_path(self) -> Path | None:
        """The stored configuration file, if one was registered."""
        name = self.manifest.get("config")
        return self.path / str(name) if name else None

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics recorded at registration."""
        return dict(self.manifest.get("metrics") or {})

    @property
    def algo(self) -> str:
        """The algorithm name (``ppo``, ``maskable_ppo`` or ``sentio_ppo``)."""
        return str(self.manifest["algo"])

    @property
    def created_at(self) -> str:
        """ISO-8601 UTC creation time."""
        return str(self.manifest["created_at"])


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The metrics the gate compares, as produced by an ``evaluate`` callback.

    ``candidate``: the candidate's gate metrics (``dsr``, ``max_drawdown``, ``sharpe``,
    ``window_start`` / ``window_end``). ``champion``: the champion's metrics re-evaluated
    on the SAME window, or None (no champion, or no comparison possible). ``refusal``: why
    the candidate cannot be compared with the champion (e.g. too few leakage-free bars);
    a refusal fails the gate. ``window``: the comparison window ``(start, end)``, if any.
    """

    candidate: dict[str, Any]
    champion: dict[str, Any] | None = None
    refusal: str | None = None
    window: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """The promotion gate's verdict: ``promote`` and, when refused, every reason with numbers.

    ``checks`` lists every condition evaluated (passing or not), for the record.
    """

    promote: bool
    reasons: list[str]
    checks: list[str] = dataclasses.field(default_factory=list)
    champion: str | None = None
    """The champion version the candidate was gated against (None: no champion)."""
    comparison: Comparison | None = None
    """What ``evaluate`` returned in :meth:`Registry.promote_if_passes`, if it was called."""

    def summary(self) -> str:
        """One line: the verdict and the failing (or all) conditions."""
        if self.promote:
            return "gate passed: " + "; ".join(self.checks)
        return "gate refused: " + "; ".join(self.reasons)


def _number(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    if not metrics or metrics.get(key) is None:
        return None
    try:
        value = float(metrics[key])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _window(metrics: Mapping[str, Any] | None) -> tuple[str, str] | None:
    if not metrics:
        return None
    start, end = metrics.get("window_start"), metrics.get("window_end")
    if start is None or end is None:
        return None
    return (str(start), str(end))


def gate(
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    cfg: RegistryConfig,
) -> GateDecision:
    """Decide whether a candidate with metrics ``candidate`` may replace the champion.

    ``candidate`` and ``champion`` are metrics dicts with ``dsr``, ``max_drawdown``,
    ``sharpe`` (out of sample) and ``window_start`` / ``window_end``; ``champion`` is
    None when there is no champion yet. See the module docstring for the rules.
    """
    reasons: list[str] = []
    checks: list[str] = []

    dsr = _number(candidate, "dsr")
    if dsr is None:
        reasons.append(f"DSR missing or not finite (needs >= {cfg.min_dsr:g})")
    else:
        ok = dsr >= cfg.min_dsr
        line = f"DSR {dsr:.4g} {'>=' if ok else '<'} min_dsr {cfg.min_dsr:g}"
        checks.append(line)
        if not ok:
            reasons.append(line)

    mdd = _number(candidate, "max_drawdown")
    if mdd is None:
        reasons.append(f"max drawdown missing or not finite (limit {cfg.max_drawdown:g})")
    else:
        ok = abs(mdd) <= cfg.max_drawdown
        line = f"max drawdown {abs(mdd):.4g} {'<=' if ok else '>'} limit {cfg.max_drawdown:g}"
        checks.append(line)
        if not ok:
            reasons.append(line)

    if cfg.must_beat_champion and champion is not None:
        cand_w, champ_w = _window(candidate), _window(champion)
        cand_s, champ_s = _number(candidate, "sharpe"), _number(champion, "sharpe")
        if cand_w is None or champ_w is None:
            reasons.append(
                "cannot compare with the champion: window_start/window_end missing "
                f"(candidate {cand_w}, champion {champ_w})"
            )
        elif cand_w != champ_w:
            reasons.append(
                "cannot compare with the champion: different out-of-sample windows "
                f"(candidate {cand_w[0]}..{cand_w[1]}, champion {champ_w[0]}..{champ_w[1]}); "
                "re-evaluate the champion on the candidate's window"
            )
        elif cand_s is None or champ_s is None:
            reasons.append(
                f"cannot compare with the champion: Sharpe missing (candidate {cand_s}, "
                f"champion {champ_s})"
            )
        else:
            ok = cand_s > champ_s
            line = (
                f"Sharpe {cand_s:.4g} {'>' if ok else '<='} champion {champ_s:.4g} "
                f"on {cand_w[0]}..{cand_w[1]}"
            )
            checks.append(line)
            if not ok:
                reasons.append(line)
    elif cfg.must_beat_champion:
        checks.append("no champion yet")

    return GateDecision(promote=not reasons, reasons=reasons, checks=checks)


class Registry:
    """A model registry rooted at ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], *, lock_timeout: float = 60.0) -> None:
        self.root = Path(root)
        self.lock_timeout = lock_timeout

    @classmethod
    def from_config(cls, cfg: SentioConfig) -> Registry:
        """The registry at ``<paths.workdir>/registry``."""
        return cls(default_root(cfg))

    # -- paths -----------------------------------------------------------------------

    @property
    def versions_dir(self) -> Path:
        """Where the version folders live."""
        return self.root / "versions"

    @property
    def champion_path(self) -> Path:
        """The champion pointer file."""
        return self.root / CHAMPION

    @property
    def history_path(self) -> Path:
        """The append-only history of pointer changes and rejections."""
        return self.root / HISTORY

    def _lock(self) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / LOCK), timeout=self.lock_timeout)

    # -- versions --------------------------------------------------------------------

    def register(
        self,
        model_path: str | os.PathLike[str],
        config_path: str | os.PathLike[str] | None,
        metrics: Mapping[str, Any],
        *,
        data_hashes: Mapping[str, str],
        code_version: str,
        algo: str,
        extra: Mapping[str, Any] | None = None,
        extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> Version:
        """Copy a trained model (and its configuration) into a new, immutable version.

        ``extra_files`` maps a file name inside the version folder (a plain name such as
        ``normaliser.json``) to its source; they are copied and hashed like the model, so
        :meth:`verify` covers them.
        """
        if algo not in ALGOS:
            raise RegistryError(f"unknown algo {algo!r}; expected one of {sorted(ALGOS)}")
        model_src = Path(model_path)
        if not model_src.is_file():
            raise RegistryError(f"{model_src}: model file not found")
        files: dict[Path, str] = {model_src: "model" + (model_src.suffix or ".zip")}
        if config_path is not None:
            config_src = Path(config_path)
            if not config_src.is_file():
                raise RegistryError(f"{config_src}: configuration file not found")
            files[config_src] = "config" + (config_src.suffix or ".yaml")
        for name, src in (extra_files or {}).items():
            src_path = Path(src)
            if Path(name).name != name or name in (MANIFEST, *files.values()):
                raise RegistryError(f"bad extra file name {name!r} (a plain, unused file name)")
            if not src_path.is_file():
                raise RegistryError(f"{src_path}: file not found ({name})")
            files[src_path] = name

        created = now_utc()
        try:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.versions_dir))
        except OSError as exc:
            if is_disk_full(exc):
                raise self._disk_full(model_src) from None
            raise
        try:
            hashes: dict[str, str] = {}
            for src, name in files.items():
                _copy_synced(src, tmp / name)
                hashes[name] = sha256_file(tmp / name)
            meta = {
                "created_at": iso_z(created),
                "algo": algo,
                "code_version": code_version,
                "metrics": dict(metrics),
                "data_hashes": dict(data_hashes),
                "extra": dict(extra or {}),
            }
            short = combine_hashes([*sorted(hashes.values()), hash_json(meta)])[:8]
            version_id = f"{created.strftime('%Y%m%dT%H%M%S%f')}Z-{short}"
            manifest = {
                "version": version_id,
                **meta,
                "model": files[model_src],
                "config": files.get(Path(config_path)) if config_path is not None else None,
                "files": hashes,
            }
            write_json_atomic(tmp / MANIFEST, manifest)
            final = self.versions_dir / version_id
            os.replace(tmp, final)  # the version appears complete or not at all
            os.chmod(final, 0o755)
            fsync_dir(final)
            fsync_dir(self.versions_dir)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            # a full disk while copying (OSError) or writing the manifest (ResourceError
            # naming the temporary folder, gone now): name the registry's folder instead
            if is_disk_full(exc) or isinstance(exc, ResourceError):
                raise self._disk_full(model_src) from None
            raise
        return Version(version_id, final, manifest)

    def _disk_full(self, model_src: Path) -> ResourceError:
        return ResourceError(
            f"{self.versions_dir}: no space left on the device while registering "
            f"{model_src}; nothing was registered; free space there (or point "
            "paths.workdir at a larger disk) and run again"
        )

    def find(self, train_key: str, *, model_sha256: str | None = None) -> Version | None:
        """The oldest version whose ``extra.train_key`` is ``train_key`` (and whose model file
        has the sha256 ``model_sha256``, when given); None when there is none.

        The train key hashes every input of a training (data, folds, regime model,
        settings, code, fold, seed), so a match is the same training registered before.
        """
        for v in self.list():
            if (v.manifest.get("extra") or {}).get("train_key") != train_key:
                continue
            files = v.manifest.get("files") or {}
            if model_sha256 is None or files.get(v.manifest.get("model")) == model_sha256:
                return v
        return None

    def register_once(
        self,
        model_path: str | os.PathLike[str],
        config_path: str | os.PathLike[str] | None,
        metrics: Mapping[str, Any],
        *,
        data_hashes: Mapping[str, str],
        code_version: str,
        algo: str,
        extra: Mapping[str, Any],
        extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> tuple[Version, bool]:
        """:meth:`register` unless the same training is registered already; idempotent.

        ``extra`` must hold ``train_key``. Under the registry lock: when a version with the
        same ``extra.train_key`` and the same model sha256 exists (:meth:`find`), it is
        returned with ``False``; otherwise a new version is registered and returned with
        ``True``. Two processes registering the same training at once create one version.
        """
        key = extra.get("train_key")
        if not key:
            raise RegistryError("register_once needs extra['train_key']")
        model_sha = sha256_file(model_path)
        with self._locked():
            found = self.find(str(key), model_sha256=model_sha)
            if found is not None:
                return found, False
            v = self.register(
                model_path,
                config_path,
                metrics,
                data_hashes=data_hashes,
                code_version=code_version,
                algo=algo,
                extra=extra,
                extra_files=extra_files,
            )
            return v, True

    def list(self) -> list[Version]:
        """Every version, oldest first (ids sort by creation time)."""
        if not self.versions_dir.is_dir():
            return []
        out = []
        for d in sorted(self.versions_dir.iterdir()):
            if _VERSION_RE.match(d.name) and (d / MANIFEST).is_file():
                out.append(self._read(d))
        return out

    def _read(self, d: Path) -> Version:
        try:
            manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise RegistryError(f"{d / MANIFEST}: cannot read the manifest ({err})") from None
        return Version(d.name, d, manifest)

    def get(self, version_id: str) -> Version:
        """The version ``version_id``; a :class:`RegistryError` when there is none."""
        d = self.versions_dir / version_id
        if not _VERSION_RE.match(version_id) or not (d / MANIFEST).is_file():
            known = [v.version for v in self.list()]
            hint = f"latest is {known[-1]}" if known else "the registry is empty"
            raise RegistryError(f"unknown model version {version_id!r} in {self.root} ({hint})")
        return self._read(d)

    # -- the champion pointer --------------------------------------------------------

    def champion(self) -> dict[str, Any] | None:
        """The champion pointer (``version``, ``promoted_at``, ``reason`` ...) or None."""
        try:
            text = self.champion_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            pointer: dict[str, Any] = json.loads(text)
        except ValueError as err:
            raise RegistryError(f"{self.champion_path}: corrupt champion pointer ({err})") from None
        return pointer

    def champion_version(self) -> Version | None:
        """The champion's :class:`Version`, or None when there is no champion."""
        pointer = self.champion()
        return self.get(str(pointer["version"])) if pointer else None

    def history(self) -> builtins.list[dict[str, Any]]:
        """Every history record, oldest first."""
        if not self.history_path.is_file():
            return []
        lines = self.history_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def _history_size(self) -> int | None:
        """The history file's size in bytes; None when there is no history file yet."""
        try:
            return self.history_path.stat().st_size
        except FileNotFoundError:
            return None

    def _restore_history(self, size: int | None) -> None:
        """Cut the history back to ``size`` bytes (None: remove it), undoing an append.

        Truncating needs no free space, so this works on a full disk too.
        """
        if size is None:
            self.history_path.unlink(missing_ok=True)
        elif self.history_path.exists() and self.history_path.stat().st_size != size:
            os.truncate(self.history_path, size)

    def _append_history(self, record: Mapping[str, Any]) -> None:
        """Append one line to ``history.jsonl``: the whole line or, on an error, nothing.

        Only ever called under the lock (one writer at a time). A failed append (a full
        disk can write part of the line) is cut back to the previous size; a full disk
        becomes a :class:`~sentio.errors.ResourceError` naming the history file.
        """
        data = (json.dumps(record, default=str) + "\n").encode("utf-8")
        size = self._history_size()
        try:
            fd = os.open(self.history_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            self._restore_history(size)
            if is_disk_full(exc):
                raise disk_full_error(self.history_path) from None
            raise

    def _write_pointer(
        self,
        version_id: str,
        reason: str,
        *,
        manual: bool,
        action: str,
        lineage: builtins.list[str],
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        current = self.champion()
        now = iso_z(now_utc())
        pointer = {
            "version": version_id,
            "promoted_at": now,
            "reason": reason,
            "manual": manual,
            "previous": current["version"] if current else None,
            "lineage": lineage,
        }
        record = {
            "action": action,
            "version": version_id,
            "previous": pointer["previous"],
            "at": now,
            "reason": reason,
            "manual": manual,
            **(extra or {}),
        }
        # Both or neither: the new pointer is written to a temporary file, the history
        # line appended, and only then is the pointer renamed into place. Any failure
        # (a full disk) removes the temporary pointer and cuts the history back.
        size = self._history_size()
        try:
            with atomic_path(self.champion_path) as tmp:
                tmp.write_text(json.dumps(pointer, indent=2, default=str) + "\n", encoding="utf-8")
                self._append_history(record)
        except BaseException:
            self._restore_history(size)
            raise
        return pointer

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the registry lock (``root/.lock``) for the ``with`` block.

        Raises :class:`RegistryError` when another process holds it for more than
        ``lock_timeout`` seconds.
        """
        lock = self._lock()
        try:
            lock.acquire()
        except Timeout:
            raise RegistryError(
                f"{self.root / LOCK}: registry locked by another process for more than "
                f"{self.lock_timeout:g} s"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def promote(self, version_id: str, reason: str, *, manual: bool = True) -> dict[str, Any]:
        """Make ``version_id`` the champion, without the gate; returns the new pointer.

        Every file of the version is verified first (:meth:`verify`): a damaged version
        raises :class:`IntegrityError` and the pointer and the history stay unchanged.
        """
        self.get(version_id)
        with self._locked():
            self.verify(version_id, purpose="promote")
            current = self.champion()
            lineage = list(current.get("lineage", [])) + [current["version"]] if current else []
            return self._write_pointer(
                version_id, reason, manual=manual, action="promote", lineage=lineage
            )

    def rollback(self, reason: str = "rollback") -> dict[str, Any]:
        """Restore the previous champion; returns the new pointer.

        The previous champion's files are verified first (:meth:`verify`): when it is
        damaged, :class:`IntegrityError` is raised and nothing changes.
        """
        with self._locked():
            current = self.champion()
            if current is None:
                raise RegistryError(f"no champion in {self.root}: nothing to roll back")
            lineage = list(current.get("lineage", []))
            if not lineage:
                raise RegistryError(
                    f"champion {current['version']} has no previous champion to roll back to"
                )
            target = lineage.pop()
            self.verify(target, purpose="roll back to")
            return self._write_pointer(
                target, reason, manual=True, action="rollback", lineage=lineage
            )

    def promote_if_passes(
        self,
        version_id: str,
        cfg: RegistryConfig,
        *,
        reason: str | None = None,
        evaluate: Callable[[Version | None], Comparison] | None = None,
    ) -> GateDecision:
        """Gate ``version_id`` against the current champion and promote it if it passes.

        The champion is read, compared and replaced within one lock (compare-and-swap), so
        the champion the candidate beat is the one it replaces; a candidate that already is
        the champion is refused without a history line. The candidate's files are verified
        under the lock (:meth:`verify`): a damaged candidate is refused (``reasons`` holds
        the file and the mismatch, recorded as a rejection) without calling ``evaluate``.

        Without ``evaluate`` the gate compares the metrics recorded in the two manifests.
        With ``evaluate``, it is called under the lock with the current champion's
        :class:`Version` (or None) and returns the :class:`Comparison` to gate: typically
        the champion re-evaluated on the candidate's window. A ``Comparison.refusal`` fails
        the gate with that reason (the candidate's own conditions are still checked and
        listed). Promotions and refusals go to ``history.jsonl`` with the metrics compared
        and the window.
        """
        candidate = self.get(version_id)
        with self._locked():
            pointer = self.champion()
            champ = self.get(str(pointer["version"])) if pointer else None
            champ_id = champ.version if champ else None
            if pointer is not None and champ is not None and champ.version == version_id:
                # e.g. a re-run on unchanged inputs, or a retry after this very promotion
                since = f" (since {pointer.get('promoted_at')}: {pointer.get('reason')})"
                return GateDecision(
                    False, [f"{version_id} is already the champion{since}"], champion=champ_id
                )
            decision = self._gate_locked(candidate, champ, cfg, evaluate)
            decision = dataclasses.replace(decision, champion=champ_id)
            self._record_locked(version_id, decision, pointer, reason)
            return decision

    def _gate_locked(
        self,
        candidate: Version,
        champ: Version | None,
        cfg: RegistryConfig,
        evaluate: Callable[[Version | None], Comparison] | None,
    ) -> GateDecision:
        """The gate's verdict on ``candidate`` against ``champ`` (under the lock).

        A damaged candidate is refused with the mismatch; without ``evaluate`` the
        manifests' metrics are gated; with it, the :class:`Comparison` it returns (kept in
        the decision), a refusal failing the gate beside the candidate's own conditions.
        """
        try:
            self.verify(candidate.version, purpose="promote")  # never promote a damaged version
        except IntegrityError as err:
            return GateDecision(False, [str(err)])
        if evaluate is None:
            return gate(candidate.metrics, champ.metrics if champ else None, cfg)
        comparison = evaluate(champ)
        if comparison.refusal is None:
            decision = gate(comparison.candidate, comparison.champion, cfg)
        else:
            own = gate(comparison.candidate, None, cfg)
            decision = GateDecision(
                False,
                [*own.reasons, comparison.refusal],
                [c for c in own.checks if c != "no champion yet"],
            )
        return dataclasses.replace(decision, comparison=comparison)

    def _record_locked(
        self,
        version_id: str,
        decision: GateDecision,
        pointer: dict[str, Any] | None,
        reason: str | None,
    ) -> None:
        """Carry out a gate decision (under the lock): the new pointer, or a rejection line.

        Both go to ``history.jsonl`` with the checks and, when a comparison was made, its
        window and both sets of metrics.
        """
        comparison = decision.comparison
        record: dict[str, Any] = {}
        if comparison is not None:
            record = {
                "window": list(comparison.window) if comparison.window else None,
                "candidate_metrics": comparison.candidate,
                "champion_metrics": comparison.champion,
            }
        if decision.promote:
            lineage = list(pointer.get("lineage", [])) + [pointer["version"]] if pointer else []
            text = decision.summary() if reason is None else f"{reason}; {decision.summary()}"
            self._write_pointer(
                version_id,
                text,
                manual=False,
                action="promote",
                lineage=lineage,
                extra={"checks": decision.checks, **record},
            )
        else:
            self._append_history(
                {
                    "action": "reject",
                    "version": version_id,
                    "champion": decision.champion,
                    "at": iso_z(now_utc()),
                    "reasons": decision.reasons,
                    "checks": decision.checks,
                    **record,
                }
            )

    # -- loading ---------------------------------------------------------------------

    def verify(self, version_id: str, *, purpose: str | None = "load") -> dict[str, bytes]:
        """Read every file of the manifest and check its sha256; returns the verified bytes.

        Raises :class:`IntegrityError` naming the file (and both hashes on a mismatch);
        ``purpose`` (``"load"``, ``"promote"`` ...) ends the message with what is refused.
        """
        v = self.get(version_id)
        refusing = f"; refusing to {purpose} it" if purpose else ""
        files = v.manifest.get("files")
        if not isinstance(files, dict) or v.manifest.get("model") not in files:
            raise IntegrityError(
                f"{v.path / MANIFEST}: no file hashes for the model{refusing}",
                file=MANIFEST,
                problem="damaged",
            )
        out: dict[str, bytes] = {}
        for name, expected in files.items():
            path = v.path / str(name)
            if Path(str(name)).name != name:
                raise IntegrityError(
                    f"{v.path / MANIFEST}: bad file name {name!r}{refusing}",
                    file=MANIFEST,
                    problem="damaged",
                )
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise IntegrityError(
                    f"{path}: file of version {version_id} is missing{refusing}",
                    file=str(name),
                    problem="missing",
                ) from None
            actual = sha256_bytes(data)
            if actual != expected:
                raise IntegrityError(
                    f"{path}: sha256 mismatch, manifest {expected}, file {actual} "
                    f"(modified after registration){refusing}",
                    file=str(name),
                    problem="damaged",
                )
            out[str(name)] = data
        return out

    def integrity(self, version_id: str) -> Integrity:
        """Whether every file of ``version_id`` matches its manifest, without raising.

        Runs :meth:`verify` (every file is read and hashed) and reports its verdict; an
        unknown version still raises :class:`RegistryError`.
        """
        try:
            self.verify(version_id, purpose=None)
        except IntegrityError as err:
            return Integrity(err.problem, err.file, str(err))
        return Integrity("ok")

    def load_model(self, version_id: str, **load_kwargs: Any) -> Any:
        """Verify every file of ``version_id``, then load the model with its algorithm class.

        ``load_kwargs`` go to ``<Algo>.load`` (e.g. ``device="cpu"``, ``env=...``). The
        model is unpickled from the very bytes whose hash was checked.
        """
        v = self.get(version_id)
        if v.algo not in ALGOS:
            raise RegistryError(f"{v.path / MANIFEST}: unknown algo {v.algo!r}")
        data = self.verify(version_id)[str(v.manifest["model"])]
        module_name, class_name = ALGOS[v.algo]
        import importlib

        cls = getattr(importlib.import_module(module_name), class_name)
        return cls.load(io.BytesIO(data), **load_kwargs)


# -- presentation of a registry-stage decision ------------------------------------------


def decision_markdown(decision: Mapping[str, Any]) -> str:
    """The markdown of a registry-stage decision (:func:`sentio.stages.registry.registry_stage`)."""
    cand = decision.get("candidate")
    before, after = decision.get("champion_before"), decision.get("champion_after")
    if cand is None:
        head = "**No candidate**: nothing was trained with an out-of-sample window."
    elif decision.get("promoted"):
        head = f"**Promoted** `{cand}` to champion (was `{before or 'none'}`)."
    else:
        head = f"**Not promoted**: `{cand}`; the champion stays `{after or 'none'}`."
    lines = [
        "# Registry decision",
        "",
        head,
        "",
        f"Registered {len(decision.get('registered') or [])} version(s), "
        f"{decision.get('new_versions', 0)} new; registry `{decision.get('registry')}`.",
        "",
    ]
    if decision.get("candidate_fold") is not None:
        lines += [
            f"Candidate: fold {decision['candidate_fold']} (the test window ending last), "
            f"seed {decision['candidate_seed']} (best stitched out-of-sample Sharpe).",
            "",
        ]
    window = decision.get("compare_window")
    if window:
        lines += [f"Comparison window (leakage-free): {window[0]} .. {window[1]}", ""]
    if decision.get("reasons"):
        lines += ["## Reasons", "", *[f"- {r}" for r in decision["reasons"]], ""]
    if decision.get("checks"):
        lines += ["## Checks", "", *[f"- {c}" for c in decision["checks"]], ""]
    cm, hm = decision.get("candidate_metrics") or {}, decision.get("champion_metrics") or {}
    if cm:
        lines += [
            "## Metrics",
            "",
            "| | candidate | champion |",
            "|---|---|---|",
        ]
        for key in ("sharpe", "dsr", "max_drawdown", "total_return", "n_bars"):
            if key not in cm and key not in hm:
                continue  # e.g. total_return: only the window backtests carry it
            digits = 0 if key == "n_bars" else 3
            lines.append(
                f"| {key} | {format_number(cm.get(key), digits)} | "
                f"{format_number(hm.get(key), digits)} |"
            )
        lines.append(
            f"| window | {cm.get('window_start')} .. {cm.get('window_end')} | "
            + (f"{hm.get('window_start')} .. {hm.get('window_end')}" if hm else "n/a")
            + " |"
        )
        lines.append("")
    return "\n".join(lines)


def versions_table(decision: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per registered (fold, seed): its version, whether it is new, the candidate."""
    return [
        {
            "fold": v["fold"],
            "seed": v["seed"],
            "version": v["version"],
            "new": bool(v["new"]),
            "candidate": v["version"] == decision.get("candidate"),
            "champion": v["version"] == decision.get("champion_after"),
        }
        for v in decision.get("versions") or []
    ]
