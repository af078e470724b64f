"""The teacher: synthetic queries, candidate mining and LLM soft relevance labels (see the issues)."""
