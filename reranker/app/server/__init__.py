"""The re-rank HTTP server: Cohere- and TEI-compatible endpoints over a dynamically batched model.

``create_app(model_dir_or_scorer, settings)`` builds the ASGI app; ``reranker serve MODEL_DIR``
runs it with uvicorn; :class:`~reranker.app.server.client.RerankClient` calls it.
"""
