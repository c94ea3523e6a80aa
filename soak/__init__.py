"""The reliability soak run (``python -m soak``, ``make soak``).

It drives the load client and server process of :mod:`tests.helpers` and the reliability
test modules, and ``soak.report`` writes ``docs/reliability.md`` from what they measured.
"""
