"""A receiver's response, per framing (SPEC 2.1, 2.2, 2.7): the I/O shell around ``core.framing``.

- ``base``: the ``Reader`` contract every framing fulfils, and the options a reader asks for;
- ``raw``: the plain GET reader, zero-copy from the ring to the socket;
- ``encoded``: the SSE and NDJSON readers, each chunk copied once and re-encoded;
- ``wakeup_delivery``: a caught-up reader's bytes sent from inside the ring's wake-up
  callback, without a task switch.

The WebSocket reader is ``http.websocket``; ``http.receiver`` picks a reader per request.
"""
