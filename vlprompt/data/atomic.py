"""Atomic, concurrent-safe file writes with normal permissions.

Every file vlprompt writes (result JSONs, leaderboards, few-shot and feature caches, learned prompts,
run records) goes through these helpers: the content is written to a uniquely named temporary file in the
destination folder, flushed, given the permissions of an ordinary new file (``0o666`` minus the umask,
never ``0600``) and moved over the destination with :func:`os.replace`. A reader therefore sees either the
old file or the complete new one, never a truncated file, and concurrent writers never interleave.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from safetensors.torch import save_file

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "file_mode", "sha256_file", "save_safetensors"]


def file_mode() -> int:
    """The mode of an ordinary new file under the current umask (e.g. ``0o644``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path next to ``path``; on success it replaces ``path`` atomically.

    The caller writes the temporary file by any means (e.g. ``safetensors.save_file``). On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (unique temp file, fsync, ``os.replace``); returns ``path``."""
    dest = Path(path)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return dest


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_safetensors(tensors: dict, path: str | os.PathLike, *, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` made atomic and with normal permissions (safetensors itself writes 0600)."""
    dest = Path(path)
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return dest


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_writable(folder: str | os.PathLike, what: str, error: Callable[[str], Exception]) -> Path:
    """Create ``folder`` if needed and prove it writable by writing and removing a probe file; raise
    ``error(message)`` naming the folder and the fix otherwise. Called before any work starts."""
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".vlprompt-write-check.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise error(
            f"{what} {str(p)!r} is not writable ({exc.strerror or exc}); choose another folder or fix its "
            "permissions before starting (nothing has been trained yet)."
        ) from exc
    return p
