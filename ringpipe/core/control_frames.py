"""Control frames between workers: frozen dataclasses, a versioned header, a total decoder.

Wire format of one frame (all integers big-endian)::

    0      2      3      4              8
    +------+------+------+--------------+---------------------------+
    | "RP" | ver  | type | payload len  | payload: UTF-8 JSON object |
    +------+------+------+--------------+---------------------------+

``type`` indexes ``FRAME_TYPES``; the JSON object maps the dataclass's field names to
values (``PartyId`` as ``[worker, pid, serial]``, tuples as lists, enums as their value);
a field with a default may be left out.
JSON keeps the codec obvious and versionable; frames are small and never on the data path
(bytes go through the rings, wake-ups through ``wakeup.py`` datagrams).

``decode`` is total: any input returns frames (and the unconsumed tail) or raises
``ControlProtocolError``; the link that sent it is then dropped.
"""

from __future__ import annotations

import enum
import json
import struct
import types
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, Final

from ringpipe.core.errors import ControlProtocolError
from ringpipe.core.rendezvous import (
    Accepted,
    Answer,
    Cancel,
    Cancelled,
    Evicted,
    Finish,
    Join,
    Leave,
    PartyId,
    Query,
    ReceiverAborted,
    ReceiverConnected,
    ReceiverEvicted,
    Reject,
    Stalled,
)

__all__ = [
    "FRAME_TYPES",
    "MAX_PAYLOAD",
    "Broken",
    "Frame",
    "Hello",
    "PartyFrame",
    "PipeStatus",
    "RelayInfo",
    "Start",
    "decode",
    "encode",
]

VERSION: Final = 1
HEADER: Final = struct.Struct("!2sBBI")
MAGIC: Final = b"RP"
#: A Start frame for n=256 with long headers is a few tens of KiB; 4 MiB means corruption.
MAX_PAYLOAD: Final = 4 << 20


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on every link: who is calling."""

    worker: int
    pid: int


@dataclass(frozen=True, slots=True)
class RelayInfo:
    """What a party needs to join an established relay's ring.

    ``segment`` is the shared-memory name (unique per owner process and relay); ``readers``
    gives the worker of each reader slot, so the writer knows whom to wake. ``epoch`` names
    this pipe instance among all that ever used its path (SSE ids are ``<epoch>-<offset>``;
    a resume with another epoch is refused, SPEC 2.4).
    """

    segment: str
    capacity: int
    owner: int
    producer: int
    readers: tuple[int, ...]
    epoch: str = ""
    #: The pipe's stall timeout in ms (0: never), resolved by the owner; the producer applies it.
    stall_ms: int = 0


@dataclass(frozen=True, slots=True)
class Start:
    """Owner → party: the transfer starts; read (``slot >= 0``) or write (``slot == -1``)."""

    party: PartyId
    relay: RelayInfo
    slot: int
    receiver_headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Broken:
    """Owner → party: the relay's producer vanished; end visibly broken."""

    party: PartyId


@dataclass(frozen=True, slots=True)
class PipeStatus:
    """Owner → a ``HEAD`` party: the pipe's state (SPEC 2.6)."""

    party: PartyId
    state: str
    connected: int
    n: int
    offset: int
    epoch: str


Frame = (
    Hello
    | Join
    | Leave
    | Reject
    | Accepted
    | ReceiverConnected
    | ReceiverAborted
    | Finish
    | Start
    | Broken
    | Cancel
    | Query
    | Stalled
    | Answer
    | Cancelled
    | Evicted
    | ReceiverEvicted
    | PipeStatus
)
#: The frames an owner sends a party.
PartyFrame = (
    Reject
    | Accepted
    | ReceiverConnected
    | ReceiverAborted
    | ReceiverEvicted
    | Finish
    | Start
    | Broken
    | Answer
    | Cancelled
    | Evicted
    | PipeStatus
)

FRAME_TYPES: Final[tuple[type[Any], ...]] = (
    Hello,
    Join,
    Leave,
    Reject,
    Accepted,
    ReceiverConnected,
    ReceiverAborted,
    Finish,
    Start,
    Broken,
    Cancel,
    Query,
    Stalled,
    Answer,
    Cancelled,
    Evicted,
    ReceiverEvicted,
    PipeStatus,
)
#: What ``json.dumps(..., separators=(",", ":"))`` uses, built once instead of per frame.
_JSON: Final = json.JSONEncoder(separators=(",", ":"))
_TYPE_CODE: Final = {cls: code for code, cls in enumerate(FRAME_TYPES)}
_HINTS: Final = {cls: typing.get_type_hints(cls) for cls in (*FRAME_TYPES, RelayInfo)}  # PartyId: a list of 3
#: Fields a frame must carry; the others have defaults and may be left out.
_REQUIRED: Final = {
    cls: {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING} for cls in _HINTS
}


#: ``(name, default)`` of each field of every dataclass a frame can hold, in field order
#: (``dataclasses.fields`` rebuilt this tuple on every call, for every frame sent).
_FIELDS: Final = {cls: tuple((f.name, f.default) for f in fields(cls)) for cls in _HINTS}


def _to_json(value: object) -> object:
    cls = type(value)
    if cls is PartyId:
        party = typing.cast(PartyId, value)
        return [party.worker, party.pid, party.serial]
    known = _FIELDS.get(cls)
    if known is not None:
        # Fields still at their default are left out (the decoder fills them in): most
        # joins carry no key, offset or stall timeout, and control frames stay small.
        return {
            name: _to_json(v)
            for name, default in known
            if (v := getattr(value, name)) is not default and (default is MISSING or v != default)
        }
    if cls is str or cls is int or cls is bool or value is None:
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def encode(frame: Frame) -> bytes:
    """Serialize one frame, header included."""
    payload = _JSON.encode(_to_json(frame)).encode()
    return HEADER.pack(MAGIC, VERSION, _TYPE_CODE[type(frame)], len(payload)) + payload


def _bad(what: str) -> ControlProtocolError:
    return ControlProtocolError(f"malformed control frame: {what}")


_Decoder = typing.Callable[[object], object]
#: One checking converter per field type, built on first use: ``typing`` introspection per
#: field of every frame received was most of the decoder's time.
_DECODERS: dict[Any, _Decoder] = {}


def _from_json(hint: Any, raw: object) -> object:
    """``raw`` (parsed JSON) as a value of type ``hint``; ``ControlProtocolError`` if it is not one."""
    return _decoder(hint)(raw)


def _decoder(hint: Any) -> _Decoder:
    decoder = _DECODERS.get(hint)
    if decoder is None:
        decoder = _DECODERS[hint] = _build_decoder(hint)
    return decoder


def _build_decoder(hint: Any) -> _Decoder:
    origin = typing.get_origin(hint)
    if hint is PartyId:

        def party(raw: object) -> object:
            if not (isinstance(raw, list) and len(raw) == 3 and all(type(v) is int for v in raw)):
                raise _bad(f"party {raw!r}")
            return PartyId(*raw)

        return party
    if hint is bool or hint is int or hint is str:

        def scalar(raw: object) -> object:
            if type(raw) is not hint:
                raise _bad(f"expected {hint.__name__}, got {raw!r}")
            return raw

        return scalar
    if isinstance(hint, type) and issubclass(hint, enum.Enum):

        def member(raw: object) -> object:
            try:
                return hint(raw)
            except ValueError:
                raise _bad(f"bad {hint.__name__} {raw!r}") from None

        return member
    if origin in (types.UnionType, typing.Union):
        nullable = type(None) in typing.get_args(hint)
        inner = _decoder([a for a in typing.get_args(hint) if a is not type(None)][0])

        def union(raw: object) -> object:
            if raw is None and nullable:
                return None
            return inner(raw)

        return union
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _decoder(args[0])

            def variadic(raw: object) -> object:
                if not isinstance(raw, list):
                    raise _bad(f"expected list, got {raw!r}")
                return tuple(item(v) for v in raw)

            return variadic
        items = [_decoder(a) for a in args]

        def fixed(raw: object) -> object:
            if not isinstance(raw, list):
                raise _bad(f"expected list, got {raw!r}")
            if len(items) != len(raw):
                raise _bad(f"expected {len(items)} items, got {raw!r}")
            return tuple(decode_item(v) for decode_item, v in zip(items, raw, strict=True))

        return fixed
    if isinstance(hint, type) and is_dataclass(hint):
        cls = hint
        required = _REQUIRED[cls]
        allowed = set(_HINTS[cls])
        field_decoders = [(name, _decoder(h)) for name, h in _HINTS[cls].items()]

        def obj(raw: object) -> object:
            if not isinstance(raw, dict):
                raise _bad(f"expected object, got {raw!r}")
            if not required <= raw.keys() <= allowed:
                raise _bad(f"{cls.__name__} fields {sorted(raw)}")
            return cls(**{name: dec(raw[name]) for name, dec in field_decoders if name in raw})

        return obj

    def unsupported(raw: object) -> object:  # pragma: no cover - a bug in FRAME_TYPES
        raise _bad(f"unsupported field type {hint!r}")

    return unsupported


def decode(buffer: bytes | bytearray | memoryview) -> tuple[list[Frame], int]:
    """Decode every complete frame at the start of ``buffer``.

    Returns:
        The frames, and how many bytes they used; the caller keeps the rest for later.

    Raises:
        ControlProtocolError: the bytes cannot be a frame stream of this version.
    """
    view = memoryview(buffer)
    frames: list[Frame] = []
    pos = 0
    while len(view) - pos >= HEADER.size:
        magic, version, code, length = HEADER.unpack_from(view, pos)
        if magic != MAGIC or version != VERSION:
            raise _bad(f"header {bytes(view[pos : pos + HEADER.size])!r}")
        if code >= len(FRAME_TYPES) or length > MAX_PAYLOAD:
            raise _bad(f"type {code}, length {length}")
        end = pos + HEADER.size + length
        if end > len(view):
            break
        try:
            raw = json.loads(bytes(view[pos + HEADER.size : end]))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, huge ints
            raise _bad(str(exc)) from None
        frame = _decoder(FRAME_TYPES[code])(raw)
        frames.append(typing.cast(Frame, frame))
        pos = end
    return frames, pos
