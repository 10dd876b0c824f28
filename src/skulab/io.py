"""Atomic writes and content hashes: an interrupted stage never leaves a half-written output."""

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from skulab.errors import SkulabError


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_csv_atomic(path: str | Path, rows: list[dict]) -> None:
    """Rows as CSV; the columns are every key in first-seen order (later rows may add some)."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def read_csv(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """A CSV file as dicts, failing with the file's name when it or a required column is missing."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(required) - set(reader.fieldnames or ())
            if missing:
                raise SkulabError(f"{path}: missing columns {sorted(missing)}")
            return list(reader)
    except FileNotFoundError:
        raise SkulabError(f"{path}: missing") from None


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def read_json(path: Path) -> Any:
    """Parse a JSON file; invalid JSON is a one-line SkulabError naming the file and line."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise SkulabError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, dump_json(obj))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write (file or directory); move it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    _remove(tmp)
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        _remove(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def hash_files(root: str | Path, exclude: tuple[str, ...] = ()) -> str:
    """sha256 over every file's relative path and bytes under `root`, in sorted order."""
    root = Path(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel in exclude:
            continue
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def params_hash(obj: Any) -> str:
    """A short stable hash of params (pydantic models or plain data), for tags and resume checks."""
    if hasattr(obj, "model_dump"):  # a pydantic model
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
