"""Shared-memory files by name, and the ring regions this process has mapped.

Names. Every file ringpipe puts in ``/dev/shm`` is ``ringpipe-<supervisor pid>-<worker
pid>-...``: a worker's arena is ``ringpipe-<sup>-<pid>-arena``. So the supervisor removes
everything a worker made by one prefix when it reaps the worker (kill -9 included) and
everything of its own at exit, and at start-up sweeps the files of supervisors that no
longer run. An unlinked file stays mapped in the processes that use it, so a sweep never
pulls memory from under a live reader.

A *ring name* says where one ring lives: ``<arena>:<relay id>:<offset>:<length>`` (its slot's
byte offset in the arena and the bytes to map: header plus largest capacity). A name without
``:`` is a whole file holding one ring (tests and tools make those).

Regions. A process maps a ring once, however many handles it opens on it (an owner that is
also the producer and a reader of its pipe maps it once): ``open_region`` and
``close_region`` count the handles, and the last close unmaps. The owner's rings are views
into its arena's mapping of a chunk of slots (``adopt_region``, ``Region.base``; the arena
unmaps the chunk); a party elsewhere maps just its ring's slot. The handles share one set
of views on the ring (``Region.views``, made by the first, released by the last), so a
ring costs its views once per process, not once per handle. ``Region.parties`` counts the
handles of parties (not the owner's own), which is what the ring's *users* byte for this
worker says to the owner (``segment.RingSegment``).

No ``multiprocessing.shared_memory``: it registers every segment with the resource tracker,
which may unlink a segment when *any* attaching process exits (cpython gh-82300), and it
cannot map part of a file. ``os.open`` on ``/dev/shm`` is what ``shm_open`` does on Linux.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from typing import Final

__all__ = [
    "PREFIX",
    "SHM_DIR",
    "Grower",
    "Region",
    "adopt_region",
    "arena_name",
    "close_region",
    "grower_of",
    "mapped",
    "open_region",
    "parse_ring_name",
    "register_grower",
    "ring_name",
    "segment_name",
    "segment_prefix",
    "sweep",
    "sweep_orphans",
    "unregister_grower",
]

SHM_DIR: Final = "/dev/shm"
PREFIX: Final = "ringpipe-"

#: Reserves bytes ``[start, end)`` of the ring whose region starts at file offset ``offset``
#: (its owner's arena), in whole pages (``start``: where the ring's capacity ends now, in the
#: last page it reserved): ``grow(offset, start, end)``; False if the budget or /dev/shm refuses.
Grower = Callable[[int, int, int], bool]


def segment_prefix(supervisor_pid: int, owner_pid: int | None = None) -> str:
    """Name prefix of a supervisor's files, or of one worker's."""
    base = f"{PREFIX}{supervisor_pid}-"
    return base if owner_pid is None else f"{base}{owner_pid}-"


def segment_name(supervisor_pid: int, owner_pid: int, serial: int) -> str:
    """A whole-file ring's name under a worker's prefix (tests, tools)."""
    return f"{segment_prefix(supervisor_pid, owner_pid)}{serial}"


def arena_name(supervisor_pid: int, owner_pid: int) -> str:
    return f"{segment_prefix(supervisor_pid, owner_pid)}arena"


def ring_name(arena: str, relay_id: int, offset: int, length: int) -> str:
    return f"{arena}:{relay_id}:{offset}:{length}"


def parse_ring_name(name: str) -> tuple[str, int, int, int]:
    """``(file, relay id, offset, length)`` of a ring name; ``(name, 0, 0, 0)`` for a whole
    file (length 0: the file's size).

    Raises:
        FileNotFoundError: the name is malformed (no ring can be found under it).
    """
    if ":" not in name:
        return name, 0, 0, 0
    try:
        file, relay_id, offset, length = name.split(":")
        return file, int(relay_id), int(offset), int(length)
    except ValueError:
        raise FileNotFoundError(f"not a ring name: {name!r}") from None


def sweep(prefix: str) -> list[str]:
    """Unlink every file whose name starts with ``prefix``; return the names removed."""
    removed: list[str] = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:  # pragma: no cover - no /dev/shm
        return removed
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans() -> list[str]:
    """Unlink the files of supervisors that no longer run (one killed with SIGKILL, say)."""
    removed: list[str] = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:  # pragma: no cover
        return removed
    pids = {int(p) for p in (n[len(PREFIX) :].split("-", 1)[0] for n in names if n.startswith(PREFIX)) if p.isdigit()}
    for pid in pids:
        if not _alive(pid):
            removed += sweep(segment_prefix(pid))
    return removed


class Region:
    """One ring's bytes mapped in this process: ``mm[base:]`` (a mapping of its own at base 0,
    or its owner's mapping of a chunk of slots, ``shm/arena.py``)."""

    __slots__ = ("base", "file", "handles", "mm", "name", "offset", "own_mapping", "parties", "relay_id", "views")

    def __init__(
        self, name: str, mm: mmap.mmap, *, file: str, relay_id: int, offset: int, base: int, own_mapping: bool
    ) -> None:
        self.name = name
        self.file, self.relay_id, self.offset = file, relay_id, offset
        self.mm = mm
        #: Where the ring starts in ``mm``; ``offset`` is where it starts in its file.
        self.base = base
        #: Whether the last ``close_region`` unmaps ``mm`` (else it is the arena's to unmap).
        self.own_mapping = own_mapping
        #: Open handles on the ring in this process (the mapping goes with the last).
        self.handles = 0
        #: Of those, the handles of parties (producer, readers, watchers).
        self.parties = 0
        #: Views on the ring its handles share (``layout.ring_views``: header words, data,
        #: watch flags, users); released by the last ``close_region``.
        self.views: tuple[memoryview, ...] | None = None

    def madvise(self, option: int, start: int, length: int) -> None:
        """``madvise`` bytes ``[start, start + length)`` of the ring (page-aligned)."""
        self.mm.madvise(option, self.base + start, length)


_regions: dict[str, Region] = {}
_growers: dict[str, Grower] = {}


def open_region(name: str) -> Region:
    """This process's mapping of ring ``name``, mapped now if it is not yet; one more handle.

    Raises:
        FileNotFoundError: no such file (its owner is gone), or a malformed name.
    """
    region = _regions.get(name)
    if region is None:
        file, relay_id, offset, length = parse_ring_name(name)
        fd = os.open(os.path.join(SHM_DIR, file), os.O_RDWR | os.O_CLOEXEC)
        try:
            mm = mmap.mmap(fd, length or os.fstat(fd).st_size, offset=offset)
        except ValueError:  # beyond the file's end: not a ring of this file any more
            raise FileNotFoundError(f"no ring at {name!r}") from None
        finally:
            os.close(fd)
        region = _regions[name] = Region(
            name, mm, file=file, relay_id=relay_id, offset=offset, base=0, own_mapping=True
        )
    region.handles += 1
    return region


def adopt_region(
    name: str, mm: mmap.mmap, *, file: str, relay_id: int = 0, offset: int = 0, base: int = 0, own_mapping: bool = True
) -> Region:
    """Register a ring its owner just made (``shm/arena.py``, ``RingSegment.create``): at
    ``mm[base:]``, file offset ``offset``; its first handle. ``own_mapping``: the last
    ``close_region`` unmaps ``mm`` (a ring file of its own), else ``mm`` is the caller's.

    Raises:
        ValueError: a ring of that name is mapped already (a bug: names are unique while live).
    """
    if name in _regions:
        raise ValueError(f"ring {name!r} is mapped already")
    region = _regions[name] = Region(
        name, mm, file=file, relay_id=relay_id, offset=offset, base=base, own_mapping=own_mapping
    )
    region.handles = 1
    return region


def close_region(region: Region) -> None:
    """One handle fewer; the last one releases the views and unmaps a mapping of its own (or
    leaves that to the garbage collector while a view lent to the event loop is still alive:
    nothing touches it any more)."""
    region.handles -= 1
    if region.handles == 0:
        if _regions.get(region.name) is region:
            del _regions[region.name]
        views, region.views = region.views, None
        for view in views or ():
            view.release()
        if region.own_mapping:
            try:
                region.mm.close()
            except BufferError:
                pass


def register_grower(file: str, grower: Grower) -> None:
    """Rings of arena ``file`` may grow in this process: it is their owner's (``shm/arena.py``)."""
    _growers[file] = grower


def unregister_grower(file: str) -> None:
    _growers.pop(file, None)


def grower_of(region: Region) -> Grower | None:
    return _growers.get(region.file)


def mapped() -> int:
    """Rings mapped in this process (tests: nothing is left mapped)."""
    return len(_regions)
