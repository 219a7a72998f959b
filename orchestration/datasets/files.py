"""Finding and reading source files on a local disk or any pyarrow.fs URI (file://, s3://, gs://, ...)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from orchestration.datasets.base import DatasetError


def filesystem(path: str, setting: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `path` (a local path or a URI) and the path inside it."""
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
            raise DatasetError(f"{setting} {path} cannot be opened: {err}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class Listing:
    """The source files found at one setting's path."""

    fs: pafs.FileSystem
    root: str
    """`path` inside `fs`: the file itself, or the directory the files are under."""
    files: list[pafs.FileInfo]

    def stamp(self) -> str:
        """Identifies the files' contents for the cache: path, size and modification time of each."""
        return "|".join(f"{f.path}:{f.size}:{f.mtime_ns}" for f in self.files)

    def read_bytes(self, info: pafs.FileInfo) -> bytes:
        """The bytes of one of the files."""
        with self.fs.open_input_file(info.path) as f:
            return f.read()


def find_files(path: str, setting: str, suffixes: tuple[str, ...]) -> Listing:
    """`path` itself if it is a file, else the files under it ending in one of `suffixes`, sorted.

    Names starting with '.' or '_' (hidden files, _SUCCESS markers) are skipped in directories.

    Raises:
        DatasetError: `path` is unset or missing, or a directory without any such file.
    """
    if not path:
        raise DatasetError(f"set {setting} to a file, a directory of files or a URI")
    fs, inner = filesystem(path, setting)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise DatasetError(f"{setting} {path} does not exist")
    if info.type == pafs.FileType.File:
        return Listing(fs, inner, [info])
    found = [f for f in fs.get_file_info(pafs.FileSelector(inner, recursive=True))
             if f.type == pafs.FileType.File and f.path.lower().endswith(suffixes)
             and not any(part.startswith((".", "_")) for part in f.path[len(inner):].split("/") if part)]
    if not found:
        raise DatasetError(f"{setting} {path} holds no {' or '.join(suffixes)} files")
    return Listing(fs, inner, sorted(found, key=lambda f: f.path))
