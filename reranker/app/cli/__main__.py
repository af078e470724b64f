"""``python -m reranker.app.cli`` (``accelerate launch -m reranker.app.cli distill CONFIG``, torchrun)."""

from reranker.app.cli import main

main()
