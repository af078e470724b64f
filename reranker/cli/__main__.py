"""``python -m reranker.cli`` (``accelerate launch -m reranker.cli distill CONFIG``, torchrun)."""

from . import main

main()
