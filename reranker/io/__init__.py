"""Readers and writers for the formats IR people use: BEIR, TREC, JSONL, ir_datasets,
TREC DL candidate files and folders of enterprise documents."""
