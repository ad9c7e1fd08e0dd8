"""Control frames: round trips, streaming decode, and a total decoder under fuzzing."""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringpipe.core import control_frames
from ringpipe.core.control_frames import (
    FRAME_TYPES,
    HEADER,
    MAGIC,
    MAX_PAYLOAD,
    VERSION,
    Broken,
    Frame,
    Hello,
    PipeStatus,
    RelayInfo,
    Start,
    decode,
    encode,
)
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
    Role,
    Stalled,
)

P = PartyId(2, 4321, 17)
INFO = RelayInfo(segment="ringpipe-1-2-3", capacity=1 << 20, owner=0, producer=2, readers=(1, 1, 3))

EXAMPLES: list[Frame] = [
    Hello(worker=3, pid=98765),
    Join(P, "/some/path%20x", Role.SENDER, 3, (("content-type", "text/plain"), ("x-piping", "é ☃"))),
    Join(P, "/", Role.RECEIVER, 1),
    Leave(P, completed=True),
    Leave(P, completed=False),
    Reject(P, 400, "The number of receivers should be 2 but 3."),
    Accepted(P, 3, None),
    Accepted(P, 3, 2),
    ReceiverConnected(P),
    ReceiverAborted(P),
    Finish(P, all_aborted=True),
    Start(P, INFO, 0, (("content-length", "5"),)),
    Start(P, RelayInfo("s", 4096, 1, 1, ()), -1, ()),
    Broken(P),
    Join(P, "/w", Role.WATCHER, 1, key="ab" * 32),
    Join(P, "/r", Role.RECEIVER, 2, offset=1234, epoch="lq2x9k", resumable=True, stall_ms=1500),
    Join(P, "/r", Role.RECEIVER, 1, offset=4, epoch="lq2x9j", resumable=True, gaps=True),
    Cancel(P, "/p", "cd" * 32),
    Query(P, "/p"),
    Stalled(P, 3),
    Answer(P, 204, ""),
    Cancelled(P),
    Evicted(P),
    ReceiverEvicted(P),
    PipeStatus(P, "established", 2, 3, 65536, "lq2x9k"),
    Start(P, RelayInfo("s", 4096, 1, 1, (0,), "lq2x9k", 30000), -2, ()),
]


def _frame(code: int, payload: bytes, *, magic: bytes = MAGIC, version: int = VERSION) -> bytes:
    return HEADER.pack(magic, version, code, len(payload)) + payload


def _code(cls: type[Any]) -> int:
    return FRAME_TYPES.index(cls)


# -- round trips -----------------------------------------------------------------------------


def test_every_frame_type_has_an_example() -> None:
    """A frame type added to FRAME_TYPES without a round-trip example fails here."""
    assert {type(f) for f in EXAMPLES} == set(FRAME_TYPES)


@pytest.mark.parametrize("frame", EXAMPLES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: Frame) -> None:
    """Every frame decodes to an equal frame (tuples stay tuples, enums stay enums)."""
    wire = encode(frame)
    assert wire[:2] == MAGIC and wire[2] == VERSION and wire[3] == _code(type(frame))
    assert struct.unpack("!I", wire[4:8])[0] == len(wire) - HEADER.size
    json.loads(wire[HEADER.size :].decode("utf-8"))  # the payload is UTF-8 JSON
    frames, used = decode(wire)
    assert frames == [frame] and used == len(wire)
    assert type(frames[0]) is type(frame)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_decode_accepts_any_buffer(wrap: Any) -> None:
    """The link reader may hand in bytes, a bytearray or a memoryview."""
    wire = b"".join(encode(f) for f in EXAMPLES)
    assert decode(wrap(wire)) == (EXAMPLES, len(wire))


def test_stream_split_at_every_byte_boundary() -> None:
    """However the socket splits a stream, frames come out whole, in order, with the right byte count."""
    wires = [encode(f) for f in EXAMPLES]
    stream = b"".join(wires)
    ends = [sum(len(w) for w in wires[: i + 1]) for i in range(len(wires))]
    for cut in range(len(stream) + 1):
        head = stream[:cut]
        frames, used = decode(head)
        complete = [e for e in ends if e <= cut]
        assert frames == EXAMPLES[: len(complete)]
        assert used == (complete[-1] if complete else 0)
        rest, used_rest = decode(head[used:] + stream[cut:])
        assert frames + rest == EXAMPLES
        assert used + used_rest == len(stream)


def test_short_input_waits_for_more() -> None:
    """A partial header or a partial payload is not an error: nothing is consumed yet."""
    wire = encode(EXAMPLES[1])
    assert decode(b"") == ([], 0)
    assert decode(wire[: HEADER.size - 1]) == ([], 0)
    assert decode(wire[:-1]) == ([], 0)


# -- rejections -----------------------------------------------------------------------------

HELLO = json.dumps({"worker": 1, "pid": 2}).encode()
PARTY = [1, 2, 3]


def _join(**changes: object) -> bytes:
    """A Join frame whose JSON differs from a valid one by ``changes``."""
    fields = {"party": PARTY, "path": "/", "role": "sender", "n": 1, "receiver_headers": [], **changes}
    return _frame(_code(Join), json.dumps(fields).encode())


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(_frame(0, HELLO, magic=b"XX"), id="bad-magic"),
        pytest.param(_frame(0, HELLO, version=VERSION + 1), id="bad-version"),
        pytest.param(_frame(0, HELLO, version=0), id="version-0"),
        pytest.param(_frame(len(FRAME_TYPES), HELLO), id="type-code-past-the-end"),
        pytest.param(_frame(255, HELLO), id="type-code-255"),
        pytest.param(HEADER.pack(MAGIC, VERSION, 0, MAX_PAYLOAD + 1), id="oversized-length-header-only"),
        pytest.param(_frame(0, b"\xff\xfe\xfd"), id="not-utf8"),
        pytest.param(_frame(0, b'{"worker": 1,'), id="truncated-json"),
        pytest.param(_frame(0, b""), id="empty-payload"),
        pytest.param(_frame(0, b"[" * 100_000), id="deep-nesting"),
        pytest.param(_frame(0, b"[1, 2]"), id="array-not-object"),
        pytest.param(_frame(0, b'{"worker": 1}'), id="missing-field"),
        pytest.param(_frame(0, b'{"worker": 1, "pid": 2, "x": 0}'), id="extra-field"),
        pytest.param(_frame(0, b'{"worker": "1", "pid": 2}'), id="str-for-int"),
        pytest.param(_frame(0, b'{"worker": true, "pid": 2}'), id="bool-for-int"),
        pytest.param(_frame(0, b'{"worker": 1.0, "pid": 2}'), id="float-for-int"),
        pytest.param(_frame(0, b'{"worker": null, "pid": 2}'), id="null-for-int"),
        pytest.param(_frame(0, b'{"worker": NaN, "pid": 2}'), id="nan-for-int"),
        pytest.param(_frame(_code(Leave), b'{"party": [1, 2, 3], "completed": 1}'), id="int-for-bool"),
        pytest.param(_frame(_code(Leave), b'{"party": [1, 2], "completed": true}'), id="short-party"),
        pytest.param(_frame(_code(Leave), b'{"party": [1, 2, "3"], "completed": true}'), id="str-in-party"),
        pytest.param(_frame(_code(Leave), b'{"party": [1, 2, true], "completed": true}'), id="bool-in-party"),
        pytest.param(_frame(_code(Leave), b'{"party": {"worker": 1}, "completed": true}'), id="object-party"),
        pytest.param(_join(role="Sender"), id="bad-role"),
        pytest.param(_join(n=None), id="null-n"),
        pytest.param(_join(role=["sender"]), id="unhashable-role"),
        pytest.param(_join(receiver_headers=[["a"]]), id="header-pair-too-short"),
        pytest.param(_join(receiver_headers="a"), id="headers-not-a-list"),
        pytest.param(_join(receiver_headers=[[1, 2]]), id="header-values-not-str"),
        pytest.param(
            _frame(_code(Accepted), json.dumps({"party": PARTY, "n": 1, "connected": "2"}).encode()),
            id="optional-int-wrong-type",
        ),
        pytest.param(
            _frame(_code(Start), json.dumps({"party": PARTY, "relay": [], "slot": 0, "receiver_headers": []}).encode()),
            id="nested-dataclass-not-object",
        ),
        pytest.param(
            _frame(
                _code(Start),
                json.dumps(
                    {
                        "party": PARTY,
                        "relay": {"segment": "s", "capacity": 1, "owner": 0, "producer": 0, "readers": [0, "1"]},
                        "slot": 0,
                        "receiver_headers": [],
                    }
                ).encode(),
            ),
            id="nested-field-wrong-type",
        ),
        pytest.param(encode(Hello(1, 2)) + b"junk-after-a-good-frame", id="garbage-after-valid-frame"),
    ],
)
def test_malformed_frames_raise_control_protocol_error(wire: bytes) -> None:
    """A malformed frame is a ControlProtocolError (the link is dropped), never another exception."""
    with pytest.raises(ControlProtocolError, match="^malformed control frame: "):
        decode(wire)


def test_huge_integer_is_a_control_protocol_error() -> None:
    """decode() is total even for an integer literal past CPython's int-conversion digit limit."""
    payload = b'{"worker": ' + b"1" * 5000 + b', "pid": 2}'
    with pytest.raises(ControlProtocolError):
        decode(_frame(0, payload))


def test_join_helper_builds_a_valid_frame() -> None:
    """The rejection cases above differ from a valid frame only by the field they name."""
    assert decode(_join()) == ([Join(PartyId(1, 2, 3), "/", Role.SENDER, 1, ())], len(_join()))


def test_every_single_byte_mutation_is_handled() -> None:
    """Flipping any one byte of any valid frame yields frames or ControlProtocolError, nothing else."""
    for frame in EXAMPLES:
        wire = bytearray(encode(frame))
        for i in range(len(wire)):
            for mask in (0x01, 0x20, 0x80, 0xFF):
                mutated = bytearray(wire)
                mutated[i] ^= mask
                _decode_totally(bytes(mutated))


def test_every_type_code_on_every_payload_is_handled() -> None:
    """A frame relabelled with any type code decodes or raises ControlProtocolError."""
    for frame in EXAMPLES:
        payload = encode(frame)[HEADER.size :]
        for code in range(256):
            _decode_totally(_frame(code, payload))


# -- fuzzing --------------------------------------------------------------------------------


def _decode_totally(data: bytes) -> None:
    try:
        frames, used = decode(data)
    except ControlProtocolError:
        return
    assert 0 <= used <= len(data)
    for frame in frames:
        assert type(frame) in FRAME_TYPES
        assert decode(encode(frame)) == ([frame], len(encode(frame)))


_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=5,
)


def _names(cls: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


_field_names = st.sampled_from(sorted({name for cls in (*FRAME_TYPES, RelayInfo) for name in _names(cls)}))


@st.composite
def _plausible_frames(draw: st.DrawFn) -> bytes:
    """A well-formed header around a JSON object shaped like some frame, with values of any type."""
    code = draw(st.integers(0, len(FRAME_TYPES)))
    if code < len(FRAME_TYPES) and draw(st.booleans()):
        names = _names(FRAME_TYPES[code])
    else:
        names = draw(st.lists(_field_names, max_size=5, unique=True))
    obj = {name: draw(_json | st.just(PARTY) | st.sampled_from(["sender", "receiver"])) for name in names}
    return _frame(code, json.dumps(obj).encode())


@st.composite
def _mutated_frames(draw: st.DrawFn) -> bytes:
    wire = bytearray(b"".join(encode(f) for f in draw(st.lists(st.sampled_from(EXAMPLES), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(wire) - 1))
        wire[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        wire = wire[: draw(st.integers(0, len(wire)))]
    return bytes(wire)


_fuzz_settings = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz_settings
@given(st.binary(max_size=64) | st.binary(max_size=64).map(lambda b: MAGIC + bytes([VERSION]) + b))
def test_decode_arbitrary_bytes_is_total(data: bytes) -> None:
    """decode() on arbitrary bytes returns frames or raises ControlProtocolError, nothing else."""
    _decode_totally(data)


@_fuzz_settings
@given(_plausible_frames())
def test_decode_wrongly_typed_fields_is_total(data: bytes) -> None:
    """Well-framed JSON with wrong, missing or extra fields never escapes as another exception."""
    _decode_totally(data)


@_fuzz_settings
@given(_mutated_frames())
def test_decode_mutated_valid_frames_is_total(data: bytes) -> None:
    """Valid frame streams with random byte changes and truncation never escape as another exception."""
    _decode_totally(data)


def test_max_payload_is_accepted_up_to_the_limit() -> None:
    """A header announcing exactly MAX_PAYLOAD bytes is legal and simply waits for the bytes."""
    assert decode(HEADER.pack(MAGIC, VERSION, 0, MAX_PAYLOAD)) == ([], 0)
    assert control_frames.MAX_PAYLOAD == 4 << 20
