"""The reliability soak run (``python -m soak``, ``make soak``) and the helpers its tests share.

``soak.server`` runs uvicorn with a hijack protocol in a process of its own, ``soak.load`` is
the checked echo load client, ``soak.wire`` holds raw-socket helpers, ``soak.stats`` carries
figures from the tests to the report, and ``soak.report`` writes ``docs/reliability.md``.
"""
