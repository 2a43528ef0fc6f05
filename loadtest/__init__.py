"""Load-testing tools, kept out of the service package: tests and benchmarks share them.

- ``client``: ``remi loadtest``, the Python closed-loop load generator for POST /recommend.
- ``server``: a server under test as a subprocess on a free port (start, wait until ready, stop).
- ``cpu``: CPU seconds of the server's process tree, the client, Redis and the whole machine.
- ``wrk``: wrk with ``recommend.lua`` (beside this file) and the one JSON line that script prints.

Nothing here imports torch or the training package: ``remi loadtest`` runs from a service-only install.
"""
