"""Atomic writes: a reader (or a crash) never sees a half-written file or folder.

Everything is written beside its destination under a hidden temporary name and put in place with
one ``os.replace`` (atomic on one file system). The standard library has the parts (``tempfile``,
``os.replace``) but not the whole; the well-known packages for it (``atomicwrites``) are archived.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_folder(dest: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; on a clean exit it becomes ``dest``.

    ``replace``: an existing ``dest`` is swapped out (the old one removed after the swap); False:
    an existing ``dest`` wins (another process finished first) and the new folder is dropped. On
    an exception the temporary folder is removed and ``dest`` is untouched. A killed process can
    leave ``.NAME.tmp-*`` behind (:func:`gooddrag.io.outputs.remove_stale_partials` cleans up).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        if not dest.exists():
            os.replace(tmp, dest)
        elif replace:
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / dest.name)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_file(dest: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` for a temporary path beside ``dest``, then put it at ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name that ``write`` creates itself, so the file gets the user's usual permissions
    # (umask), where ``tempfile.mkstemp`` would make it private (0600)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.part"
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def write_json_atomic(dest: str | Path, data: Any) -> Path:
    """``data`` as indented JSON at ``dest``, atomically (values JSON cannot hold written with ``str``)."""
    return atomic_file(dest, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8"))


__all__ = ["atomic_folder", "atomic_file", "write_json_atomic"]
