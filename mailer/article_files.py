"""Reading article files for an import: which paths, and only what is safe to read.

What an import reads, and why nothing else is read:
* Only regular files. The type is checked with stat before the file is opened, because
  opening a FIFO blocks and a device such as /dev/zero never ends; the open itself is
  non-blocking, so a path swapped for a FIFO after the check cannot hang it either, and the
  opened file is checked again (fstat) before a byte is read.
* At most MAX_FILE_BYTES of it. The size is checked before reading, and the read asks for
  one byte more than the cap at most, so a file that grows meanwhile (or that reports a size
  of 0, as /proc files do) is refused without ever holding more than that in memory.
* In a folder, nothing outside it. A symlink is followed only when its target (resolved)
  is inside the folder; one that leaves it is reported as skipped and never opened. Linked
  folders are never entered: whatever they hold inside the folder is walked under its own
  name. The file opened must still be the one that was checked (same device and inode).
* Each file once. A file reached twice (a link to another file of the folder, or a path
  named twice) is read under its own name, and the other paths say which file they repeat.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mailer.errors import InputError

MAX_FILE_BYTES = 20 * 1024 * 1024
LINK_LEAVES = "symlink leaves the folder"
# Not on every platform; where it is missing there are no FIFOs to block on either.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_KINDS = {
    stat.S_ISDIR: "folder",
    stat.S_ISCHR: "character device",
    stat.S_ISBLK: "block device",
    stat.S_ISFIFO: "FIFO",
    stat.S_ISSOCK: "socket",
}


@dataclass
class FileReport:
    path: str
    added: int = 0
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Candidate:
    """A path found for import: to be read, or only reported (skip or error set)."""

    path: Path
    skip: str = ""
    error: str = ""
    # (st_dev, st_ino) when it was found: the file opened must still be this one.
    identity: tuple[int, int] | None = None


def collect_files(paths: list[str]) -> list[Candidate]:
    """Files named directly, plus the .txt files in named folders (sorted, recursive)."""
    found: list[Candidate] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(_folder_files(p))
        elif p.exists():  # a link named on the command line is followed: the user chose it
            found.append(Candidate(p))
        else:
            raise InputError(f"{raw}: no such file or folder")
    return _once_each(found)


def _folder_files(root: Path) -> list[Candidate]:
    inside = root.resolve()
    found: list[Candidate] = []

    def unreadable(exc: OSError) -> None:
        found.append(Candidate(Path(exc.filename), error=f"cannot read folder: {exc.strerror or exc}"))

    # followlinks=False: a linked folder is listed in `folders` but not entered.
    for here, folders, files in os.walk(root, onerror=unreadable):
        for name in folders:
            link = Path(here, name)
            if link.is_symlink() and (reason := _link_problem(link, inside)):
                found.append(Candidate(link, skip=reason))
        for name in files:
            if name.endswith(".txt"):
                path = Path(here, name)
                found.append(Candidate(path, skip=_link_problem(path, inside) if path.is_symlink() else ""))
    return sorted(found, key=lambda c: c.path)


def _link_problem(link: Path, inside: Path) -> str:
    """Why a link found in a folder is not followed ("" when it may be)."""
    try:
        target = link.resolve()
    except (OSError, RuntimeError):  # a loop: RuntimeError before Python 3.13
        return "symlink loop"
    if not target.is_relative_to(inside):
        return f"{LINK_LEAVES} (to {target})"
    return "" if target.exists() else "broken symlink"


def _once_each(found: list[Candidate]) -> list[Candidate]:
    """Mark every path after the first that reaches the same file; own names go first."""
    first: dict[tuple[int, int], Path] = {}
    for c in sorted(found, key=lambda c: c.path.is_symlink()):  # stable: keeps the order otherwise
        if c.skip or c.error:
            continue
        try:
            st = c.path.stat()
        except OSError:
            continue  # reported when it is read
        c.identity = (st.st_dev, st.st_ino)
        if c.identity in first:
            c.skip = "named twice" if first[c.identity] == c.path else f"same file as {first[c.identity]}"
        else:
            first[c.identity] = c.path
    return found


def read_regular_file(path: Path, identity: tuple[int, int] | None = None) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES, else an InputError saying why
    (see the module docstring for why each check is where it is)."""
    _check_regular(os.stat(path))
    fd = os.open(path, os.O_RDONLY | _NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        _check_regular(st)
        if identity is not None and (st.st_dev, st.st_ino) != identity:
            raise InputError("the file was replaced while being imported")
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InputError(_too_large())
    return data


def _check_regular(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS.items() if test(st.st_mode)), "special file")
        raise InputError(f"not a regular file (a {kind})")
    if st.st_size > MAX_FILE_BYTES:
        raise InputError(_too_large())


def _too_large() -> str:
    megabytes, rest = divmod(MAX_FILE_BYTES, 1024 * 1024)
    return f"file is larger than {f'{megabytes} MB' if not rest else f'{MAX_FILE_BYTES} bytes'}"
