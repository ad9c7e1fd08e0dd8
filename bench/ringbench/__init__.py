"""The benchmark behind ``bench/run.py`` and ``bench/soak.py``: ringpipe against piping-server.

Layout, lowest first (a module imports only from those above it in this list):

- ``common``: constants, the byte pattern, sizes, percentiles, ``BenchError``;
- ``measure``: a process tree's CPU and memory from ``/proc``, the machine's busy/steal time;
- ``wire``: HTTP/1.1 over raw non-blocking sockets, the bulk sender;
- ``receiver``: the bulk receiver that checks every byte;
- ``clients``: forked client processes and their control pipe;
- ``servers``: ringpipe and piping-server started side by side, stopped for sure;
- ``tokens``: token-stream clients (asyncio protocols), shared by ``swarm`` and the soak;
- ``scenarios``: one module per scenario, and the registry;
- ``report``: medians, min-max, ratios, tables;
- ``cli``: ``bench/run.py``'s command line and its round loop;
- ``soak``: ``bench/soak.py``: a long swarm against ringpipe with a worker killed now and then.
"""
