"""``predict_proba`` of the pipelines :func:`closedloop.core.modeling.build_model` makes,
without the pandas round trip: for one event online and for a million in batch.

:class:`FastPipeline` makes the calls a fitted ``Pipeline(ColumnTransformer, estimator)``
makes, on the same fitted objects, with each transformer's block built straight from the
caller's columns: Python values online (:meth:`FastPipeline.predict_proba`), Arrow or
numpy columns in batch (:meth:`FastPipeline.predict_proba_columns`, where a categorical
block is encoded once per distinct combination of values and gathered per row). Callers
check a model's first answer against the pipeline's own and use the pipeline when they
differ; any other model shape is refused (``TypeError``). What it saves: docs/design.md.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

# The fast paths hand arrays without column names to transformers fitted on a frame;
# scikit-learn warns about that on every call. The columns are selected by name here,
# so the warning says nothing in this process.
warnings.filterwarnings("ignore", message="X does not have valid feature names")

Column = pa.Array | pa.ChunkedArray | np.ndarray


class FastPipeline:
    """See the module. ``FastPipeline(pipeline)`` raises ``TypeError`` for a model of
    another shape."""

    def __init__(self, pipeline: Any) -> None:
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

        if not (
            isinstance(pipeline, Pipeline)
            and len(pipeline.steps) == 2
            and isinstance(pipeline[0], ColumnTransformer)
            and pipeline[0].remainder == "drop"
            and not getattr(pipeline[0], "sparse_output_", False)
        ):
            raise TypeError("not a Pipeline(ColumnTransformer(remainder='drop'), estimator)")
        self.parts = [
            (transformer, list(columns))
            for _, transformer, columns in pipeline[0].transformers_
            if transformer != "drop" and len(columns)
        ]
        # transformers known to map each row on its own: safe to run on distinct rows
        self._row_wise = [isinstance(t, (OneHotEncoder, OrdinalEncoder)) for t, _ in self.parts]
        self._caches: list[dict[tuple[Any, ...], np.ndarray]] = [{} for _ in self.parts]
        self.estimator = pipeline[-1]

    # -- online: columns of Python values ------------------------------------------------
    #: distinct rows a categorical block remembers (then it starts again)
    CACHE_ROWS = 65_536

    def predict_proba(self, columns: Mapping[str, list[Any]], rows: list[int]) -> np.ndarray:
        """The probabilities of ``rows`` of ``columns`` (name -> list of values).

        A categorical block of a row-wise encoder comes from a cache of the encoder's
        answers per distinct row: one event's one-hot encoding cost 2.4 ms here
        (``OneHotEncoder.transform``'s checks on a 1-row object array), more than the
        feature lookup and the rest of the model together, and a use case has a few
        hundred combinations of its categories."""
        blocks = []
        for part, (transformer, names) in enumerate(self.parts):
            values = [tuple(columns[n][i] for n in names) for i in rows]
            if not any(isinstance(v, str) for row in values for v in row):
                array = np.array(values, dtype=np.float64)
                blocks.append(
                    array if transformer == "passthrough" else transformer.transform(array)
                )
            elif self._row_wise[part]:
                blocks.append(self._remembered(part, transformer, values))
            else:
                blocks.append(transformer.transform(np.array(values, dtype=object)))
        return self._estimate(blocks)

    def remember(self, categories: Mapping[str, Sequence[Any]]) -> int:
        """Fill the cache of each categorical block whose columns all have declared
        ``categories`` with every combination of them (at most :attr:`CACHE_ROWS`), in
        one call of the encoder: online answers then never wait for it. Returns the
        number of rows remembered."""
        remembered = 0
        for part, (transformer, names) in enumerate(self.parts):
            if not self._row_wise[part] or not all(categories.get(n) for n in names):
                continue
            if math.prod(len(categories[n]) for n in names) > self.CACHE_ROWS:
                continue
            rows = list(itertools.product(*(categories[n] for n in names)))
            self._remembered(part, transformer, rows)
            remembered += len(rows)
        return remembered

    def _remembered(self, part: int, transformer: Any, rows: list[tuple[Any, ...]]) -> np.ndarray:
        cache = self._caches[part]
        new = list(dict.fromkeys(row for row in rows if row not in cache))
        if new:
            encoded = _dense(transformer.transform(np.array(new, dtype=object)))
            if len(cache) + len(new) > self.CACHE_ROWS:
                cache.clear()
            cache.update(zip(new, encoded, strict=True))
        return np.vstack([cache[row] for row in rows])

    # -- batch: Arrow or numpy columns ----------------------------------------------------
    def predict_proba_columns(self, columns: Mapping[str, Column]) -> np.ndarray:
        """The probabilities of every row of ``columns`` (name -> Arrow array or numpy
        array, all of one length)."""
        n = len(next(iter(columns.values())))
        # each block as (None, its rows' values) or, a categorical block, (each row's
        # distinct row, the values of the distinct rows)
        blocks: list[tuple[np.ndarray | None, np.ndarray]] = []
        for (transformer, names), row_wise in zip(self.parts, self._row_wise, strict=True):
            parts = [columns[c] for c in names]
            if all(_is_numeric(p) for p in parts):
                block = np.empty((n, len(parts)), dtype=np.float64, order="F")
                for j, values in enumerate(parts):
                    block[:, j] = _floats(values)
                if transformer != "passthrough":
                    block = _dense(transformer.transform(block))
                blocks.append((None, block))
            elif row_wise:
                blocks.append(_per_distinct_row(transformer, parts))
            else:
                block = np.column_stack([_objects(p) for p in parts])
                blocks.append((None, _dense(transformer.transform(block))))
        stacked = np.hstack([block if rows is None else block[rows] for rows, block in blocks])
        return self.estimator.predict_proba(stacked)

    def _estimate(self, blocks: list[Any]) -> np.ndarray:
        stacked = np.hstack([_dense(b) for b in blocks])
        return self.estimator.predict_proba(stacked)


def _is_numeric(values: Column) -> bool:
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "biuf"
    kind = values.type
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _floats(values: Column) -> np.ndarray:
    """float64 values, NaN for nulls (what a pandas column of them gives)."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False)
    return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)


def _objects(values: Column) -> np.ndarray:
    """An object array of Python values, None for nulls (what a pandas column gives)."""
    if isinstance(values, np.ndarray):
        return values.astype(object, copy=False)
    return values.to_numpy(zero_copy_only=False).astype(object, copy=False)


def _codes(values: Column) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, distinct values as objects); a null is the last distinct value."""
    if isinstance(values, np.ndarray):
        codes, uniques = pd.factorize(values, use_na_sentinel=False)
        return codes.astype(np.int64), np.asarray(uniques, dtype=object)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_dictionary(values.type):
        values = values.dictionary_encode()
    dictionary = np.append(_objects(values.dictionary), None)
    codes = pc.fill_null(values.indices, len(dictionary) - 1).to_numpy(zero_copy_only=False)
    return codes.astype(np.int64), dictionary


def _per_distinct_row(transformer: Any, parts: list[Column]) -> tuple[np.ndarray, np.ndarray]:
    """``transformer.transform`` of the rows of ``parts`` as (each row's distinct row,
    the transform of the distinct rows): valid for a transformer that maps rows on
    their own."""
    coded = [_codes(p) for p in parts]
    n = len(coded[0][0])
    key = np.zeros(n, dtype=np.int64)
    radix = 1
    for codes, dictionary in coded:
        radix *= len(dictionary)
        if radix >= 2**62:  # the mixed-radix key would overflow: distinct rows directly
            stacked = np.column_stack([codes for codes, _ in coded])
            _, first, inverse = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
            break
        key = key * len(dictionary) + codes
    else:
        if radix <= 4 * n:  # a table of every possible key: no sort
            seen = np.zeros(radix, dtype=bool)
            seen[key] = True
            keys = np.flatnonzero(seen)
            slot = np.empty(radix, dtype=np.int64)
            slot[keys] = np.arange(len(keys))
            inverse = slot[key]
            first = np.empty(len(keys), dtype=np.int64)
            first[inverse] = np.arange(n)  # some row of each key (the last)
        else:
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    distinct = np.column_stack([dictionary[codes[first]] for codes, dictionary in coded])
    return inverse.reshape(-1), _dense(transformer.transform(distinct))


def _dense(block: Any) -> np.ndarray:
    """A transformer's output as a float64 array (a sparse one densified, as the
    ColumnTransformer does when its output is dense)."""
    if hasattr(block, "toarray"):
        block = block.toarray()
    return np.asarray(block, dtype=np.float64)
