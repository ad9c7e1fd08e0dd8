"""The HTTP edge: the uvicorn protocol subclass and its connection facade, raw request bodies,
the sender and receiver endpoints, the readers per framing (raw, SSE, NDJSON, WebSocket), the
reserved pages and the per-connection limits.
"""
