"""``campaign serve``: the HTTP side (SPEC section 10).

``actions`` does the work on the database (unsubscribe, resubscribe, clicks,
health), ``pages`` writes the small HTML pages, ``events`` the events API,
``app`` is the Starlette application that ties them to routes and ``server``
runs it under uvicorn. Only ``app`` imports Starlette and only ``server``
imports uvicorn.
"""
