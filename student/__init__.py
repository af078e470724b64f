"""The student: T5 and cross-encoder re-rankers distilled from the teacher's soft labels.

- :mod:`reranker.student_config`: :class:`~reranker.student_config.StudentConfig`, saved as ``student_config.json``;
- :mod:`reranker.formatting`: :func:`~reranker.formatting.encode_pairs`, the one way pairs become model inputs;
- :mod:`student.models`: :class:`~student.models.T5Student`, :class:`~student.models.CrossEncoderStudent`,
  :func:`~student.models.load_student`;
- :mod:`student.losses`: the distillation losses and their registry ``LOSSES``.

Nothing is imported here, so ``import student`` stays free of torch.
"""
