"""Benchmarks of asgi-hijack against stock uvicorn, asyncio, Go, Node and pproxy: ``make bench``."""
