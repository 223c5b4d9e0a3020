"""`spec serve`: the engine behind an OpenAI-compatible HTTP API.

engine.py is the one module here that knows spec's loading, chat templates and loop; the
HTTP side (app, schemas, broker, metrics) sees it only through the small interface it
exposes (`ServedPair`), and a fake with the same interface stands in for it in the unit tests.
"""
