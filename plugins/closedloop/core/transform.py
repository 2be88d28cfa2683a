"""Cleaning of a validated batch: declared types, tidy strings, a deterministic order.

This runs only after the batch passed validation, so it never drops or invents rows; it
makes the frame's physical form match the use case's declaration exactly, which keeps
every later step (and every rerun) byte-for-byte reproducible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from closedloop.core.usecase import UseCase

_CASTS = {"int": "int64", "float": "float64"}


def clean_batch(df: pd.DataFrame, usecase: UseCase) -> pd.DataFrame:
    """Cast each declared column to its type, strip strings, sort by time then id."""
    out = pd.DataFrame(index=df.index)
    for name, spec in usecase.columns.items():
        col = df[name]
        if spec.type in _CASTS:
            out[name] = col.astype(_CASTS[spec.type])
        elif spec.type in ("timestamp", "date"):
            out[name] = pd.to_datetime(col, utc=True).astype("datetime64[us, UTC]")
        else:  # text, stripped; a missing value stays missing (never the text "nan")
            text = col.astype("string").str.strip()
            out[name] = text.astype(object).where(text.notna(), None)
    order = [usecase.batch.timestamp_column, usecase.batch.id_column]
    return out.sort_values(order, kind="stable").reset_index(drop=True)
