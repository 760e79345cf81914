"""Reading vendor bar files: format by extension, CSV dialect sniffing, column mapping.

Gzip-compressed files are read too: a file is gzip when its name ends in ``.gz`` or its
content starts with the gzip magic bytes ``1f 8b``; its format is then the suffix before
``.gz`` (``bars.csv.gz``, ``bars.tsv.gz``, ``bars.feather.gz``), and a bare ``bars.gz``
is read as CSV with a sniffed delimiter. :func:`is_supported` says whether a path names a
readable bar file (what a folder listing keeps).

The readers return the file's columns renamed to canonical names but otherwise as
read (CSV columns are kept as strings), so that a quarantined row can be written
back with the values the user gave us.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from sentio.errors import DataError

IPC_EXTENSIONS = (".feather", ".arrow", ".ipc")
PARQUET_EXTENSIONS = (".parquet", ".pq")
CSV_EXTENSIONS = (".csv", ".txt", ".tsv")
SUPPORTED = IPC_EXTENSIONS + PARQUET_EXTENSIONS + CSV_EXTENSIONS
GZIP_SUFFIX = ".gz"
GZIP_MAGIC = b"\x1f\x8b"

REQUIRED = ("timestamp", "open", "high", "low", "close", "volume")

# Normalised vendor name -> canonical name. Normalisation: lower case, spaces, dashes
# and dots removed. "adj close" is deliberately absent: adjusted closes do not belong
# with unadjusted open/high/low, so Yahoo's Close is used and Adj Close is ignored.
ALIASES: dict[str, str] = {
    **dict.fromkeys(
        [
            "timestamp",
            "time",
            "datetime",
            "date",
            "t",
            "ts",
            "datetimeutc",
            "timestamputc",
            "windowstart",
            "bartime",
            "starttime",
            "begins_at",
            "beginsat",
        ],
        "timestamp",
    ),
    **dict.fromkeys(["open", "o", "openprice"], "open"),
    **dict.fromkeys(["high", "h", "highprice"], "high"),
    **dict.fromkeys(["low", "l", "lowprice"], "low"),
    **dict.fromkeys(["close", "c", "closeprice", "last"], "close"),
    **dict.fromkeys(["volume", "v", "vol"], "volume"),
    **dict.fromkeys(["symbol", "ticker", "sym", "instrument", "code"], "symbol"),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s\-\.]", "", name.strip().lower())


@dataclass
class RawFile:
    """One input file after reading and column mapping."""

    path: Path
    format: str
    frame: pl.DataFrame  # canonical column names, original values
    mapping: dict[str, str] = field(default_factory=dict)  # source column -> canonical
    ignored: list[str] = field(default_factory=list)
    delimiter: str | None = None
    header: bool | None = None
    original: pl.DataFrame = field(default_factory=pl.DataFrame)  # every column, as read

    @property
    def rows(self) -> int:
        return self.frame.height


def format_suffix(path: str | Path) -> tuple[str, bool]:
    """The suffix that names a file's format and whether its name says gzip.

    ``a.csv`` -> ``(".csv", False)``; ``a.csv.gz`` -> ``(".csv", True)``; ``a.gz`` ->
    ``(".csv", True)`` (a bare ``.gz`` is sniffed as CSV); ``a.json.gz`` ->
    ``(".json", True)``. Lower case; ``""`` for a name without a suffix.
    """
    name = Path(path).name.lower()
    if name.endswith(GZIP_SUFFIX) and len(name) > len(GZIP_SUFFIX):
        inner = Path(name[: -len(GZIP_SUFFIX)]).suffix
        return (inner or ".csv", True)
    return (Path(name).suffix, False)


def is_supported(path: str | Path) -> bool:
    """Whether ``path`` names a bar file :func:`read_file` reads (by its name only)."""
    return format_suffix(path)[0] in SUPPORTED


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(GZIP_MAGIC)) == GZIP_MAGIC


def _gunzip(path: Path, kind: str) -> io.BytesIO:
    """The decompressed content of a gzip file; a :class:`DataError` when it is corrupt."""
    try:
        with gzip.open(path, "rb") as fh:
            return io.BytesIO(fh.read())
    except (OSError, EOFError, zlib.error) as err:
        raise _read_error(path, f"gzip-compressed {kind}", err) from None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _read_error(path: Path, kind: str, err: Exception) -> DataError:
    msg = _first_line(str(err)) or type(err).__name__
    return DataError(f"{path}: cannot read as {kind} (truncated or corrupt file?): {msg}")


def _sniff_csv(path: Path, sample: str) -> tuple[str, bool]:
    lines = [ln for ln in sample.splitlines() if ln.strip()][:50]
    if not lines:
        raise DataError(f"{path}: file holds no data rows")
    try:
        delimiter = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",;\t|").delimiter
    except csv.Error:
        counts = {d: lines[0].count(d) for d in ",;\t|"}
        delimiter = max(counts, key=lambda d: counts[d])
        if counts[delimiter] == 0:
            raise DataError(
                f"{path}: cannot find the column delimiter (tried comma, semicolon, tab, pipe)"
            ) from None
    first = [tok.strip().strip('"').strip("'") for tok in lines[0].split(delimiter)]
    # A data row always holds numbers (the prices); a header row only names columns.
    numeric = [tok for tok in first if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tok)]
    header = not numeric
    return delimiter, header


def _read_csv(path: Path, columns: list[str] | None) -> RawFile:
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if head[:2] == b"\x1f\x8b":  # gzip-compressed CSV: sniff the text, not the bytes
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(65536)
        except (OSError, EOFError, zlib.error) as err:
            raise _read_error(path, "gzip-compressed CSV", err) from None
    try:
        sample = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        sample = head.decode("latin-1")
    delimiter, header = _sniff_csv(path, sample)
    if columns is not None:
        header = False  # --columns names the columns of a file without header
    try:
        frame = pl.read_csv(
            path,
            separator=delimiter,
            has_header=header,
            infer_schema=False,
            truncate_ragged_lines=False,
            encoding="utf8-lossy",
        )
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, OSError) as err:
        raise _read_error(path, "CSV", err) from None
    if not header:
        names = columns
        if names is None:
            if frame.width == len(REQUIRED):
                names = list(REQUIRED)
            else:
                raise DataError(
                    f"{path}: no header row and {frame.width} columns; name them with "
                    f"--columns (for example --columns timestamp,open,high,low,close,volume)"
                )
        if len(names) != frame.width:
            raise DataError(
                f"{path}: --columns names {len(names)} columns but the file has {frame.width}"
            )
        frame.columns = list(names)
    if header:
        names = [tok.strip().strip('"') for tok in _first_line(sample).split(delimiter)]
        seen = {n for n in names if names.count(n) > 1}
        if seen:
            raise DataError(f"{path}: the header names column {sorted(seen)[0]!r} more than once")
    frame.columns = [c.strip() for c in frame.columns]
    return RawFile(path, "csv", frame, delimiter=delimiter, header=header)


def read_file(path: str | Path, columns: list[str] | None = None) -> RawFile:
    """Read one bar file (feather/arrow, parquet or CSV with a sniffed delimiter).

    Any of them may be gzip-compressed (see the module docstring). Raises
    :class:`DataError` naming the file for a missing, empty, unreadable or unsupported
    file.
    """
    p = Path(path)
    suffix, gz_name = format_suffix(p)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected a file")
    if suffix not in SUPPORTED:
        shown = suffix + (GZIP_SUFFIX if gz_name else "")
        raise DataError(
            f"{p}: unsupported file type {shown or '(no extension)'!r}; "
            f"use one of {', '.join(SUPPORTED)}, optionally gzip-compressed (.gz)"
        )
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty")
    if suffix in CSV_EXTENSIONS:
        raw = _read_csv(p, columns)  # detects gzip by content itself
    elif suffix in IPC_EXTENSIONS:
        source = _gunzip(p, "feather/Arrow IPC") if gz_name or _is_gzip(p) else p
        try:
            raw = RawFile(p, "feather", pl.read_ipc(source))
        except Exception as err:  # polars/arrow raise several types for corrupt files
            raise _read_error(p, "feather/Arrow IPC", err) from None
    else:
        source = _gunzip(p, "parquet") if gz_name or _is_gzip(p) else p
        try:
            raw = RawFile(p, "parquet", pl.read_parquet(source))
        except Exception as err:
            raise _read_error(p, "parquet", err) from None
    if raw.frame.height == 0:
        raise DataError(f"{p}: file holds no data rows")
    _map_columns(raw)
    return raw


def _map_columns(raw: RawFile) -> None:
    """Rename vendor columns to canonical names in place; record what was ignored."""
    raw.original = raw.frame
    cols = raw.frame.columns
    mapping: dict[str, str] = {}
    # Polygon's grouped aggregates use "T" for the ticker next to "t" for the time.
    if "T" in cols and "t" in cols:
        mapping["T"] = "symbol"
    for col in cols:
        if col in mapping:
            continue
        canon = ALIASES.get(_norm(col))
        if canon is not None:
            mapping[col] = canon
    # Yahoo-style separate Date and Time columns: combine them into one timestamp.
    by_norm = {_norm(c): c for c in cols}
    if "date" in by_norm and "time" in by_norm and list(mapping.values()).count("timestamp") == 2:
        d, t = by_norm["date"], by_norm["time"]
        raw.frame = raw.frame.with_columns(
            (pl.col(d).cast(pl.String) + " " + pl.col(t).cast(pl.String)).alias(d)
        ).drop(t)
        del mapping[t]
        cols = raw.frame.columns
    targets: dict[str, list[str]] = {}
    for src, canon in mapping.items():
        targets.setdefault(canon, []).append(src)
    clashes = {k: v for k, v in targets.items() if len(v) > 1}
    if clashes:
        canon, srcs = next(iter(clashes.items()))
        raise DataError(
            f"{raw.path}: columns {', '.join(repr(s) for s in srcs)} all map to {canon!r}; "
            "keep one of them"
        )
    missing = [c for c in REQUIRED if c not in targets]
    if missing:
        unmapped = [c for c in cols if c not in mapping]
        hints = []
        for m in missing:
            close = difflib.get_close_matches(m, [c.lower() for c in unmapped], n=1, cutoff=0.6)
            if close:
                hints.append(f"{m!r} (did you mean {close[0]!r}?)")
            else:
                hints.append(repr(m))
        raise DataError(
            f"{raw.path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(hints)}; "
            f"columns found: {', '.join(cols)}"
        )
    raw.mapping = mapping
    raw.ignored = [c for c in cols if c not in mapping]
    raw.frame = raw.frame.select([pl.col(src).alias(canon) for src, canon in mapping.items()])
