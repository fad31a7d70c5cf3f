"""The OpenAI-compatible HTTP door: ``/v1/models``, ``/v1/completions``,
``/v1/chat/completions`` and ``/v1/embeddings`` over HTTPS with mutual TLS, served by a
FastAPI app on uvicorn inside the daemon's own event loop, so handlers call the node's
generation and text paths directly. Off by default (``[openai] listen``)."""
