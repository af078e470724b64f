"""Options shared by several commands of the ``reranker`` CLI."""

from __future__ import annotations

from typing import Annotated

import typer

ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", help="Teacher parameter KEY=VALUE (JSON values parse), repeatable.")]


def params_of(items: list[str] | None) -> dict:
    """``--param KEY=VALUE`` options as a dict (JSON values parse)."""
    from reranker.config import key_values

    return key_values(items)
