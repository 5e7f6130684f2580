"""The tenant HTTP API (aiohttp, on its own listener ``api.listen``).

    request -> server.py (in-flight bound, client address, key, rate limit, permission)
            -> routes.py (path, query and body decoded against the route's msgspec models)
            -> an endpoint method -> the same service function the CLI calls over the admin socket
            -> the reply encoded against the route's response model (ETag on reads)

Every route is declared once with ``@api_route`` on an endpoint class (one module per noun:
tenant.py, ...). That declaration is the whole truth about it: server.py serves it, openapi.py
documents it at /v1/openapi.json, and the role-matrix test walks it. Roles and what they may do are
in roles.py; errors are RFC 9457 problem bodies (problems.py).
"""
