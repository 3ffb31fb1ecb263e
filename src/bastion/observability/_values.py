"""Where metric values live: process memory, or a file that sibling worker processes can read.

A server started with ``uvicorn --workers 4`` runs four processes, and a scrape reaches one of
them. For that scrape to show the totals of all four, every worker keeps its values in a file of
its own, under one directory, and the scraped worker reads them all. This is the idea of
``prometheus_client``'s multiprocess mode, done differently where its users get hurt:

- **Writes are memory writes.** A worker's file is memory-mapped and each series owns a run of
  float64 slots in it; ``observe`` is a bisect and two ``+=`` on a ``memoryview``, no lock and
  no system call. (``prometheus_client`` takes a lock and packs a struct per value.)
- **Liveness is a lock, not a PID.** Each worker holds an exclusive ``flock`` on its own file for
  as long as it lives; the kernel releases it when the process dies, however it dies. A file
  whose lock can be taken belongs to a dead worker, which PID reuse cannot fake.
- **Dead workers do not pile up.** Their counters and histograms are folded into one archive
  file and their file is deleted, so totals stay monotonic while the directory holds one file
  per *live* worker plus the archive. Their gauges are dropped. (``prometheus_client`` keeps a
  file per dead PID forever, and every scrape reads them all.)

Layout of a values file, all little-endian and 8-byte aligned::

    header   u64 bytes in use (written last, after the entry it covers)
    entry    u32 key length | u32 slot count | key (UTF-8, padded to 8) | slots (f64 each)

A reader sees either the old or the new "in use" value, and the entries it covers are complete.
A slot is one aligned 8-byte store, which readers on x86-64 and arm64 never see torn.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import orjson

__all__ = [
    "ARCHIVE_NAME",
    "Values",
    "WorkerFile",
    "archive_path",
    "compact_dead",
    "parse_entries",
    "read_archive",
    "scan_directory",
]

_HEADER = struct.Struct("<Q")
_ENTRY = struct.Struct("<II")
_INITIAL_BYTES = 64 * 1024
ARCHIVE_NAME = "archive.json"
_LOCK_NAME = "archive.lock"
_WORKER_PREFIX = "worker-"
_WORKER_SUFFIX = ".db"


def _padded(length: int) -> int:
    return (length + 7) & ~7


class Values:
    """A growable array of float64 slots, allocated to series by key.

    The slots start in process memory. ``attach`` moves them into a file that sibling processes
    read, keeping every slot's index, so series created before (at import or app construction)
    keep working. A forked child gets them back in private memory: it must never write into its
    parent's file (gunicorn's ``--preload`` forks after the app is built).

    ``view`` is the current ``memoryview`` of the slots (format ``d``); series index into it.
    It is replaced when the array grows or moves, so hot paths read ``values.view`` on each use
    rather than keeping the view.
    """

    __slots__ = ("__weakref__", "_buffer", "_fd", "_used", "_widths", "keys", "view")

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self._widths: dict[int, int] = {}
        self._used = _HEADER.size
        self._fd: int | None = None
        self._buffer: bytearray | mmap.mmap = bytearray(_INITIAL_BYTES)
        _HEADER.pack_into(self._buffer, 0, self._used)
        self.view = memoryview(self._buffer).cast("d")
        _live_values.add(self)

    @property
    def shared(self) -> bool:
        """Whether the slots live in a file other processes read."""
        return self._fd is not None

    def slots(self, key: str, count: int) -> int:
        """The index of the first of ``count`` slots of series ``key`` (allocated on first use)."""
        found = self.keys.get(key)
        if found is not None:
            return found
        encoded = key.encode()
        size = _ENTRY.size + _padded(len(encoded)) + 8 * count
        if self._used + size > len(self._buffer):
            self._move(self._fd, max(2 * len(self._buffer), self._used + size))
        offset = self._used
        _ENTRY.pack_into(self._buffer, offset, len(encoded), count)
        self._buffer[offset + _ENTRY.size : offset + _ENTRY.size + len(encoded)] = encoded
        first = (offset + _ENTRY.size + _padded(len(encoded))) // 8
        self._used = offset + size
        # Publish the entry only now that it is complete: readers stop at "in use".
        _HEADER.pack_into(self._buffer, 0, self._used)
        self.keys[key] = first
        self._widths[first] = count
        return first

    def zero(self) -> None:
        """Set every slot to 0 (after the values were archived, so they never count twice)."""
        view = self.view
        for first, count in self._widths.items():
            view[first : first + count] = memoryview(bytes(8 * count)).cast("d")

    def snapshot(self) -> bytes:
        """The bytes in use, for parsing (a copy, so later writes do not move under a reader)."""
        return bytes(self._buffer[: self._used])

    def attach(self, path: Path) -> None:
        """Move the slots into a new file at ``path`` (which must not exist)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._move(fd, len(self._buffer))

    def detach(self) -> None:
        """Move the slots back into private memory and close the file."""
        fd = self._fd
        if fd is None:
            return
        self._move(None, len(self._buffer))
        with contextlib.suppress(OSError):
            os.close(fd)

    def _move(self, fd: int | None, size: int) -> None:
        if fd is None:
            new: bytearray | mmap.mmap = bytearray(size)
        else:
            os.ftruncate(fd, size)
            new = mmap.mmap(fd, size)
        new[: self._used] = self._buffer[: self._used]
        self._buffer = new
        self._fd = fd
        self.view = memoryview(new).cast("d")
        # The old buffer stays alive while a memoryview of it does; nothing writes to it now.


_live_values: weakref.WeakSet[Values] = weakref.WeakSet()


def _detach_in_child() -> None:
    for values in list(_live_values):
        if values.shared:
            values._fd = None  # the parent's descriptor: leave it to the parent
            values._move(None, len(values._buffer))


os.register_at_fork(after_in_child=_detach_in_child)


def parse_entries(data: bytes) -> Iterator[tuple[str, tuple[float, ...]]]:
    """The ``(key, slots)`` of every complete entry in a values file's bytes."""
    if len(data) < _HEADER.size:
        return
    (used,) = _HEADER.unpack_from(data, 0)
    used = min(used, len(data))
    offset = _HEADER.size
    while offset + _ENTRY.size <= used:
        key_length, count = _ENTRY.unpack_from(data, offset)
        start = offset + _ENTRY.size
        slots_at = start + _padded(key_length)
        end = slots_at + 8 * count
        if end > used:
            return
        key = data[start : start + key_length].decode()
        yield key, struct.unpack_from(f"<{count}d", data, slots_at)
        offset = end


class WorkerFile:
    """This process's values file in a shared directory, locked for as long as it lives.

    Args:
        directory: the directory the server's workers share (created if missing).
        values: the slots to move into the file.
    """

    __slots__ = ("_lock_fd", "directory", "name", "values")

    def __init__(self, directory: Path, values: Values) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self.name = f"{_WORKER_PREFIX}{os.getpid()}-{os.urandom(4).hex()}{_WORKER_SUFFIX}"
        # Made under a name scans ignore, locked, then renamed into place: a sibling must never
        # see the file unlocked and fold a live worker into the archive.
        hidden = directory / f".new-{self.name}"
        self.values = values
        values.attach(hidden)
        # A separate descriptor for the lock: flock belongs to the open file description, and a
        # sibling's attempt on its own descriptor fails for as long as this one stays open.
        self._lock_fd = os.open(hidden, os.O_RDONLY)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        hidden.rename(directory / self.name)

    def retire(self, counted: frozenset[str]) -> None:
        """At a clean exit: fold this worker's counters into the archive and delete the file.

        Args:
            counted: the keys prefixes (metric names) whose values are monotonic (counters and
                histograms) and so belong in the archive; gauges are dropped.
        """
        with _archive_lock(self.directory):
            archive = read_archive(self.directory)
            _fold(archive, self.values.snapshot(), counted)
            archive["merged"].append(self.name)
            _write_archive(self.directory, archive)
            with contextlib.suppress(FileNotFoundError):
                (self.directory / self.name).unlink()
            _prune_merged(self.directory, archive)
        self.close()
        self.values.zero()

    def close(self) -> None:
        """Release the lock and the file (without archiving); the values go back to memory."""
        self.values.detach()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


def archive_path(directory: Path) -> Path:
    """Where the totals of dead workers are kept."""
    return directory / ARCHIVE_NAME


def read_archive(directory: Path) -> dict[str, list]:  # type: ignore[type-arg]
    """The archive: ``{"merged": [file names], "series": {key: [slots]}}`` (empty if none)."""
    try:
        data = orjson.loads(archive_path(directory).read_bytes())
    except FileNotFoundError:
        return {"merged": [], "series": {}}  # type: ignore[dict-item]
    return data  # type: ignore[no-any-return]


def _write_archive(directory: Path, archive: dict[str, list]) -> None:  # type: ignore[type-arg]
    # Written whole to a temporary file and renamed over the old one: a reader or a crash sees
    # the old archive or the new one, never half of one.
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".archive-")
    with os.fdopen(fd, "wb") as stream:
        stream.write(orjson.dumps(archive))
    Path(temporary).replace(archive_path(directory))


@contextlib.contextmanager
def _archive_lock(directory: Path, *, shared: bool = False) -> Iterator[None]:
    """Folding holds it exclusively, reading shared: a scan never sees a dead worker's values
    both in its file and in the archive."""
    fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fold(archive: dict[str, list], data: bytes, counted: frozenset[str]) -> None:  # type: ignore[type-arg]
    series: dict[str, list[float]] = archive["series"]  # type: ignore[assignment]
    for key, slots in parse_entries(data):
        if _metric_name(key) not in counted:
            continue
        totals = series.get(key)
        if totals is None or len(totals) != len(slots):
            series[key] = list(slots)
        else:
            series[key] = [a + b for a, b in zip(totals, slots, strict=True)]


def _metric_name(key: str) -> str:
    return key.split("\x00", 1)[0]


def _prune_merged(directory: Path, archive: dict[str, list]) -> None:  # type: ignore[type-arg]
    """Forget merged names whose file is gone, so the list stays as short as the directory."""
    present = {path.name for path in directory.glob(f"{_WORKER_PREFIX}*{_WORKER_SUFFIX}")}
    kept = [name for name in archive["merged"] if name in present]
    if len(kept) != len(archive["merged"]):
        archive["merged"] = kept
        _write_archive(directory, archive)


def _is_dead(path: Path) -> tuple[bool, int | None]:
    """Whether the worker owning ``path`` is gone, and a descriptor holding its lock if so."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False, None
    return True, fd


def compact_dead(directory: Path, counted: frozenset[str]) -> int:
    """Fold the files of dead workers into the archive and delete them.

    Safe to run from several workers at once (the archive has a lock; a dead file is locked by
    whoever folds it) and after a crash at any point: a file already named in the archive's
    ``merged`` list is deleted without being counted twice.

    Returns:
        How many dead workers' files were folded.
    """
    dead: list[tuple[Path, int]] = []
    for path in sorted(directory.glob(f"{_WORKER_PREFIX}*{_WORKER_SUFFIX}")):
        is_dead, fd = _is_dead(path)
        if is_dead and fd is not None:
            dead.append((path, fd))
    if not dead:
        return 0
    try:
        with _archive_lock(directory):
            archive = read_archive(directory)
            merged = set(archive["merged"])
            folded = 0
            for path, _ in dead:
                if path.name in merged or not path.exists():
                    continue
                _fold(archive, path.read_bytes(), counted)
                archive["merged"].append(path.name)
                folded += 1
            if folded:
                _write_archive(directory, archive)
            for path, _ in dead:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            _prune_merged(directory, archive)
    finally:
        for _, fd in dead:
            os.close(fd)
    return folded


def scan_directory(directory: Path) -> list[tuple[int | None, bytes]]:
    """``(pid, bytes)`` of every worker's file, then ``(None, archive)`` for the dead ones.

    Run ``compact_dead`` first so that files of dead workers are already in the archive. The
    archive comes encoded as a values file would be, so callers merge one format.
    """
    found: list[tuple[int | None, bytes]] = []
    with _archive_lock(directory, shared=True):
        for path in sorted(directory.glob(f"{_WORKER_PREFIX}*{_WORKER_SUFFIX}")):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # retired between the listing and the read
                continue
            pid = int(path.name.removeprefix(_WORKER_PREFIX).split("-", 1)[0])
            found.append((pid, data))
        archive = read_archive(directory)
    found.append((None, _encode(archive["series"])))  # type: ignore[arg-type]
    return found


def _encode(series: dict[str, list[float]]) -> bytes:
    values = Values()
    for key, slots in series.items():
        first = values.slots(key, len(slots))
        for offset, value in enumerate(slots):
            values.view[first + offset] = value
    return values.snapshot()
