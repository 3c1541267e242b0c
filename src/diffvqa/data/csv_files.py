"""Reading the CSV files a user gives (the release's, the phantom's ground truth) verbatim, with errors for people.

pandas and the csv module name neither the file nor the line of what they cannot read, and pandas silently pads a
short row; here every malformed input -- empty, not UTF-8, a NUL byte, unbalanced quotes, a row with another number
of fields than its header -- is a :class:`~diffvqa.errors.UserError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from diffvqa.errors import MissingInputError, UserError, one_line


def read_csv_text(path: Path, expected: str) -> str:
    """The text of a CSV file the user gave; an empty, non-UTF-8 or NUL-holding file is a UserError naming the
    file and the byte offset and line of the first bad byte (pandas' and csv's own errors name neither)."""
    data = path.read_bytes()
    if not data.strip():
        raise UserError(f"{path}: empty file; expected {expected}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{path}: not UTF-8 text: byte {exc.start} (line {line}) is {data[exc.start : exc.start + 1]!r}; "
            "expected the release's UTF-8 CSV"
        ) from None
    if "\0" in text:
        offset = data.index(b"\0")
        line = data.count(b"\n", 0, offset) + 1
        raise UserError(f"{path}: a NUL byte at byte {offset} (line {line}); expected a text CSV")
    return text


def check_text(path: Path, required: tuple[str, ...]) -> None:
    """A CSV must be readable text (:func:`read_csv_text`) whose every row has as many fields as its header:
    else a UserError naming the file and line (pandas silently pads a short row, and turns a long one's extra
    fields into an index)."""
    text = read_csv_text(path, f"a CSV whose header holds {', '.join(required)}")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        for row in reader:
            if row and len(row) != len(header):  # pandas skips blank lines too
                raise UserError(
                    f"{path}: line {reader.line_num} has {len(row)} fields but the header has {len(header)}; "
                    "expected one field per column (a quote left open, or a comma in an unquoted field?)"
                )
    except csv.Error as exc:
        raise UserError(f"{path}: line {reader.line_num}: not a readable CSV ({exc})") from None


def read_csv(path: Path, required: tuple[str, ...], usecols: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read a CSV as strings, verbatim (no NA parsing: "none" stays "none", trailing spaces stay).

    Any malformed input -- empty, not UTF-8, unbalanced quotes, a row with too many fields -- is a UserError
    naming the file; nothing is returned from a file that could not be read whole."""
    if not path.is_file():
        raise MissingInputError(f"{path}: not found")
    check_text(path, required)
    try:
        header = pd.read_csv(path, nrows=0, dtype=str).columns.tolist()
        missing = [c for c in required if c not in header]
        if missing:
            raise UserError(f"{path}: missing column(s) {missing}; found columns {header}; expected {list(required)}")
        wanted = [c for c in (usecols or header) if c in header]
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, usecols=wanted)[wanted]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable CSV ({one_line(exc)})") from None
    return table


def to_int(values: pd.Series) -> pd.Series:
    """Strings -> Int64 (nullable); anything that is not an integer becomes <NA>."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any():  # rare: retry with surrounding spaces removed
        numbers = pd.to_numeric(values.str.strip(), errors="coerce")
    whole = numbers.notna() & (numbers == np.floor(numbers))
    return numbers.where(whole).astype("Int64")


def int_columns(table: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    """Parse ``columns`` of a :func:`read_csv` table to int64, in place; the first value that is not an integer is
    a UserError naming the file, its 0-based data row, the column and the value."""
    for column in columns:
        parsed = to_int(table[column])
        if parsed.isna().any():
            row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise UserError(f"{path}: row {row}: {column}={table[column].iloc[row]!r} is not an integer")
        table[column] = parsed.astype(np.int64)
