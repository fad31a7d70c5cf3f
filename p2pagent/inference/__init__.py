"""Inference: model formats and loading, a model cache, a pure batching policy and the
asyncio engine that runs batches on one device worker thread."""
