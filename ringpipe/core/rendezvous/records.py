"""What the rendezvous holds about one pipe, and the state that record puts the pipe in.

A pipe on a path is *free* (no record), *waiting* (a ``Waiting``: parties registered, not
all there), *established* (a ``Relay`` that still holds its path: bytes flowing) or
*ending* (a ``Relay`` whose transfer is decided and whose path is free again, kept until
its last party has left). ``PipeState`` names these four; the machine dispatches every
event on the state of the pipe it addresses.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass, field

from ringpipe.core.rendezvous.events import Headers, Join, PartyId

__all__ = ["PipeState", "Relay", "Waiting", "keys_match"]


class PipeState(enum.StrEnum):
    """Where one pipe stands. A path names a FREE, WAITING or ESTABLISHED pipe, never an
    ENDING one: an ending relay has given its path back (a new transfer may start on it).

    A ``StrEnum`` so that the table lookup hashes it in C (``Enum.__hash__`` is Python)."""

    FREE = "free"
    WAITING = "waiting"
    ESTABLISHED = "established"
    ENDING = "ending"


@dataclass(slots=True)
class Waiting:
    """A pipe whose parties are not all there yet. It holds at least one sender or receiver:
    watchers alone do not keep it."""

    path: str
    n: int
    sender: PartyId | None = None
    receiver_headers: Headers = ()
    receivers: list[PartyId] = field(default_factory=list)
    watchers: list[PartyId] = field(default_factory=list)
    key: str = ""
    stall_ms: int = -1
    #: The receivers that can resume (a list: an empty set is 216 bytes, held by every waiting pipe).
    resumable: list[PartyId] = field(default_factory=list)

    @property
    def state(self) -> PipeState:
        return PipeState.WAITING

    def parties(self) -> list[PartyId]:
        return ([self.sender] if self.sender else []) + self.receivers + self.watchers


@dataclass(slots=True)
class Relay:
    """A transfer under way on ring ``relay_id``; receiver ``p`` reads through slot ``slots[p]``.

    ``completed``/``aborted``/``evicted`` count the receivers by how they left, ``broken``
    and ``cancelled`` say how the transfer ended; ``Release`` reports them.
    """

    relay_id: int
    path: str
    n: int
    sender: PartyId | None
    slots: dict[PartyId, int]
    completed: int = 0
    aborted: int = 0
    evicted: int = 0
    broken: bool = False
    cancelled: bool = False
    #: The transfer is decided and the path given back: the relay is ENDING.
    path_freed: bool = False
    key: str = ""
    #: Reader slots kept for a dropped resumable receiver: slot -> grace deadline.
    reserved: dict[int, float] = field(default_factory=dict)
    #: The receivers that can resume, and the watchers: sets kept as dicts (keys, in the
    #: order they came; an empty set is 216 bytes, an empty dict 64, held by every relay).
    resumable: dict[PartyId, None] = field(default_factory=dict)
    watchers: dict[PartyId, None] = field(default_factory=dict)
    #: Resumes that came before the old connection's drop was seen: they wait for a slot.
    parked: dict[PartyId, Join] = field(default_factory=dict)

    @property
    def state(self) -> PipeState:
        return PipeState.ENDING if self.path_freed else PipeState.ESTABLISHED


def keys_match(expected: str, given: str) -> bool:
    """Constant-time comparison of two key digests (``""``: no key). Two empty ones (most
    pipes) match at once: that time tells nothing about a key, there is none."""
    if not expected and not given:
        return True
    return hmac.compare_digest(expected.encode(), given.encode())
