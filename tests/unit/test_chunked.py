"""``chunked.BodyFraming`` against a plain model: any body, any chunking, any read sizes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringpipe.core.chunked import HINT_MIN_CHUNK, BodyFraming, FramingError


def encode(chunks: list[bytes], *, ext: bool = False, trailers: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    out = bytearray()
    for chunk in chunks:
        out += b"%x" % len(chunk) + (b";name=value" if ext else b"") + b"\r\n" + chunk + b"\r\n"
    out += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
    return bytes(out)


def decode(framing: BodyFraming, wire: bytes, reads: list[int], direct: bool) -> tuple[bytes, bytes]:
    """Drive ``framing`` like rawbody.py: data straight "into the ring" when it says so."""
    data = bytearray()
    pos = 0
    sizes = iter(reads)
    while pos < len(wire) and not framing.done:
        size = next(sizes, 7)
        if direct and framing.data_left:
            take = min(size, framing.data_left, len(wire) - pos)
            data += wire[pos : pos + take]
            framing.took_data(take)
            pos += take
            continue
        buf = wire[pos : pos + size]
        spans, used = framing.feed(buf)
        for start, end in spans:
            data += buf[start:end]
        pos += used
        if used < len(buf):
            break
    return bytes(data), wire[pos:]


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    reads=st.lists(st.integers(1, 400), max_size=40),
    direct=st.booleans(),
    ext=st.booleans(),
    trailers=st.lists(st.sampled_from([b"X-A: 1", b"Checksum: abc"]), max_size=2),
    after=st.binary(max_size=20),
)
def test_any_chunking_and_any_reads_give_the_body_and_stop_at_its_end(
    chunks: list[bytes], reads: list[int], direct: bool, ext: bool, trailers: list[bytes], after: bytes
) -> None:
    framing = BodyFraming(content_length=None)
    data, rest = decode(framing, encode(chunks, ext=ext, trailers=trailers) + after, reads, direct)
    assert framing.done
    assert data == b"".join(chunks)
    assert rest == after  # a pipelined next request is left untouched


@given(body=st.binary(max_size=500), reads=st.lists(st.integers(1, 100), max_size=30), direct=st.booleans())
def test_content_length_bodies(body: bytes, reads: list[int], direct: bool) -> None:
    framing = BodyFraming(content_length=len(body))
    data, rest = decode(framing, body + b"NEXT", reads, direct)
    assert framing.done and data == body and rest == b"NEXT"


@given(garbage=st.binary(max_size=200))
def test_garbage_is_a_framing_error_or_incomplete_never_a_crash(garbage: bytes) -> None:
    framing = BodyFraming(content_length=None)
    try:
        spans, used = framing.feed(garbage)
    except FramingError:
        return
    assert 0 <= used <= len(garbage)
    assert all(0 <= s <= e <= used for s, e in spans)


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\n",  # not hex
        b"\r\n",  # no digits
        b"5\r\nhelloX\r\n",  # data longer than its size
        b"5\nhello",  # LF without CR
        b"1" * 17 + b"\r\n",  # size over 64 bits
        b"5;" + b"e" * 5000 + b"\r\n",  # endless extension
    ],
)
def test_malformed_framing_is_refused(wire: bytes) -> None:
    with pytest.raises(FramingError):
        BodyFraming(content_length=None).feed(wire)


def test_zero_length_content_length_is_done_at_once() -> None:
    assert BodyFraming(content_length=0).done


def test_took_data_guards_its_invariant() -> None:
    framing = BodyFraming(content_length=3)
    with pytest.raises(ValueError):
        framing.took_data(4)


def decode_with_hints(framing: BodyFraming, wire: bytes, scratch: int) -> tuple[bytes, int]:
    """Drive ``framing`` exactly like rawbody.py: data straight "into the ring", framing
    reads of ``framing_hint()`` bytes when it guesses, else ``scratch`` bytes. Returns the
    data and how many data bytes went through ``feed`` (the copied ones)."""
    data = bytearray()
    copied = pos = 0
    while pos < len(wire) and not framing.done:
        if framing.data_left:
            take = min(framing.data_left, len(wire) - pos)
            data += wire[pos : pos + take]
            framing.took_data(take)
            pos += take
            continue
        buf = wire[pos : pos + (framing.framing_hint() or scratch)]
        spans, used = framing.feed(buf)
        for start, end in spans:
            data += buf[start:end]
            copied += end - start
        pos += used
    return bytes(data), copied


@given(
    sizes=st.lists(st.integers(1, 3 * HINT_MIN_CHUNK), max_size=8),
    ext=st.booleans(),
    scratch=st.sampled_from([1, 7, 4096]),
)
def test_framing_reads_of_the_hinted_size_give_the_body(sizes: list[int], ext: bool, scratch: int) -> None:
    chunks = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    framing = BodyFraming(content_length=None)
    data, _copied = decode_with_hints(framing, encode(chunks, ext=ext) + b"NEXT", scratch)
    assert framing.done
    assert data == b"".join(chunks)


def test_equal_large_chunks_go_straight_to_the_ring_after_the_first() -> None:
    chunk = b"a" * (4 * HINT_MIN_CHUNK)
    framing = BodyFraming(content_length=None)
    data, copied = decode_with_hints(framing, encode([chunk] * 5), 4096)
    assert data == chunk * 5
    assert copied == 4096 - len(b"4000\r\n")  # only the first read, before any hint, took data


def test_no_hint_after_small_chunks_or_inside_data() -> None:
    framing = BodyFraming(content_length=None)
    spans, used = framing.feed(b"3\r\nabc")
    assert framing.framing_hint() == 0  # a small chunk: framing reads stay scratch-sized
    framing = BodyFraming(content_length=None)
    framing.feed(b"%x\r\n" % HINT_MIN_CHUNK)
    assert framing.data_left == HINT_MIN_CHUNK and framing.framing_hint() == 0
    framing.took_data(HINT_MIN_CHUNK)
    assert framing.framing_hint() == len(b"\r\n1000\r\n")


@pytest.mark.parametrize(
    "wire",
    [
        b"10;a=b\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",  # extensions: the byte-wise path
        b"0000000000000010\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",  # 16 digits, the most allowed
        b"10\r\n" + b"x" * 16 + b"\r\n0\r\nX-A: 1\r\n\r\n",  # trailers after a fast size line
    ],
)
def test_fast_and_byte_wise_size_lines_agree(wire: bytes) -> None:
    whole = BodyFraming(content_length=None)
    spans, used = whole.feed(wire)
    assert whole.done and used == len(wire) and sum(e - s for s, e in spans) == 16
    bytewise = BodyFraming(content_length=None)
    total = 0
    for i in range(len(wire)):
        got, _ = bytewise.feed(wire[i : i + 1])
        total += sum(e - s for s, e in got)
    assert bytewise.done and total == 16


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=60), max_size=12),
    cuts=st.lists(st.booleans(), max_size=40),
    reads=st.lists(st.integers(1, 90), max_size=40),
)
def test_whole_chunk_reads_and_feed_agree(chunks: list[bytes], cuts: list[bool], reads: list[int]) -> None:
    """Reads that are one whole chunk each (as a token producer sends them) interleaved
    with arbitrary reads, as rawbody.py drives it: ``whole_chunk`` first, else ``feed``.
    The data is the body's, in order, and a miss changes nothing."""
    wire = encode(chunks)
    framing = BodyFraming(content_length=None)
    data = bytearray()
    pos, i = 0, 0
    sizes = iter(reads)
    bounds = [0]
    for chunk in chunks:
        bounds.append(bounds[-1] + len(b"%x\r\n" % len(chunk)) + len(chunk) + 2)
    while pos < len(wire) and not framing.done:
        whole = cuts[i] if i < len(cuts) else False
        i += 1
        if whole and pos in bounds and bounds.index(pos) < len(chunks):
            buf = memoryview(wire)[pos : bounds[bounds.index(pos) + 1]]
        else:
            buf = memoryview(wire)[pos : pos + next(sizes, 7)]
        before = (framing._state, framing._line, framing.data_left)
        got = framing.whole_chunk(buf)
        if got is not None:
            data += got
            pos += len(buf)
            continue
        assert (framing._state, framing._line, framing.data_left) == before
        spans, used = framing.feed(buf)
        for start, end in spans:
            data += buf[start:end]
        pos += used
    assert framing.done and data == b"".join(chunks)


@pytest.mark.parametrize(
    "buf",
    [b"5\r\nhello\r\nX", b"5\r\nhell", b"5\r\nhelloXY", b"0\r\n\r\n", b"5;x\r\nhello\r\n", b"6\r\nhello\r\n"],
)
def test_whole_chunk_misses_leave_the_work_to_feed(buf: bytes) -> None:
    framing = BodyFraming(content_length=None)
    assert framing.whole_chunk(memoryview(buf)) is None
    assert framing.whole_chunk(memoryview(b"5\r\nhello\r\n")) == b"hello"
