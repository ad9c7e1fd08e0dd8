"""The pure layer: decisions and codecs with no I/O, no clock and no import beyond the stdlib.

Everything here is bytes or plain values in, plans or actions out, so it is tested with plain
calls and property tests: the ring arithmetic, the rendezvous state machine, the control-frame
codec, the HTTP body codecs (chunked, multipart), the reader framings (SSE, NDJSON, lines),
settings, access control, CORS and the reserved pages' texts. ``tests/unit/test_layering.py``
keeps it pure.
"""
