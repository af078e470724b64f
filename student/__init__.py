"""The student: T5 and cross-encoder re-rankers distilled from the teacher's soft labels (see the issues)."""
