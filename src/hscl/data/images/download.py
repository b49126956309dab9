"""Checked (md5) downloads and safe extraction of tar and zip archives (the cache directory and the
:class:`~hscl.data.images.specs.Download` records are in :mod:`~hscl.data.images.specs`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from hscl.data.images.base import ChecksumError, PathLike, UnsafeArchiveError
from hscl.data.images.specs import DatasetSpec

__all__ = ["download_file", "extract_archive"]


# ----------------------------------------------------------------------------------------------------------------
# Downloads and archives
# ----------------------------------------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, destination: PathLike, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` (http(s), ftp or file) to ``destination``, checking its md5 if given.

    The data is streamed to ``<destination>.<pid>.part`` with a progress bar, its md5 computed on the fly,
    and renamed to ``destination`` only when complete and correct; on any failure the part file is
    deleted. A ``destination`` that already exists with the right md5 is kept without downloading.
    Raises :class:`ChecksumError` on an md5 mismatch, ``urllib.error.URLError`` / ``OSError`` otherwise.
    """
    destination = Path(destination)
    if destination.is_file() and (md5 is None or _md5(destination) == md5):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(f"{destination.name}.{os.getpid()}.part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"{url}: incomplete download ({part.stat().st_size} of {total} bytes)")
        if md5 is not None and digest.hexdigest() != md5:
            raise ChecksumError(f"{url}: md5 {digest.hexdigest()} does not match the expected {md5}")
        os.replace(part, destination)
    finally:
        part.unlink(missing_ok=True)
    return destination


def _safe_target(root: Path, name: str) -> Path:
    """The path of archive member ``name`` under ``root``; raises if it is absolute or escapes ``root``."""
    if not name or name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UnsafeArchiveError(f"archive member {name!r} escapes the target directory")
    return target


def _extract_tar(archive: Path, root: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # streaming: one forward pass, even through gzip
            target = _safe_target(root, member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise UnsafeArchiveError(f"archive member {member.name!r} has no data")
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            else:
                kind = "link" if member.issym() or member.islnk() else "special file"
                raise UnsafeArchiveError(f"archive member {member.name!r} is a {kind}")


def _extract_zip(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = _safe_target(root, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"archive member {info.filename!r} is a link")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)


def extract_archive(archive: PathLike, directory: PathLike) -> list[Path]:
    """Extract a tar (any compression) or zip ``archive`` into ``directory``; returns the top-level entries.

    Members are extracted into a temporary folder inside ``directory`` and moved into place only when the
    whole archive is extracted. Raises :class:`UnsafeArchiveError` (and extracts nothing) for a member with
    an absolute path, a path escaping ``directory``, a (sym/hard) link or a special file.
    """
    archive, directory = Path(archive), Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=".extract-", dir=directory)).resolve()
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, temp)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, temp)
        else:
            raise ValueError(f"{archive}: neither a tar nor a zip archive")
        moved = []
        for entry in sorted(temp.iterdir()):
            target = directory / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
            moved.append(target)
        return moved
    finally:
        shutil.rmtree(temp, ignore_errors=True)


class _DownloadError(Exception):
    """A download step failed; ``url`` names the source, ``error`` is the cause."""

    def __init__(self, url: str, error: Exception):
        super().__init__(url, error)
        self.url, self.error = url, error


def _download(spec: DatasetSpec, target: Path) -> None:
    """Fetch, check and unpack every source file of ``spec`` into ``target``; errors name the failing URL."""
    for item in spec.downloads:
        try:
            archive = download_file(item.url, target / item.filename, item.md5)
            if item.extract:
                extract_archive(archive, target)
                archive.unlink(missing_ok=True)
        except Exception as e:
            raise _DownloadError(item.url, e) from e
