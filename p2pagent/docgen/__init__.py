"""Reference documentation generated from the code, so it cannot drift from it.

``make docs`` (``python -m p2pagent.docgen``) rewrites the configuration reference inside
docs/configuration.md, the authorization table in docs/security.md and the API reference in
docs/API.md; ``--check`` only reports what is stale, and
``tests/unit/test_docs_fresh.py`` fails until the generated text is committed.
"""
