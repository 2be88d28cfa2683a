"""The training set Spark stages, turned into the local path's frame batch by batch: the
dtypes a whole-table read gives, whichever batch holds the nulls, and the digest."""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.core.lineage import FrameDigest, frame_digest
from closedloop.core.training_set_spark import local_dtypes, local_frame

# as Spark writes them: no pandas metadata, the nulls of each column in the 2nd batch only
STAGED = pa.table(
    {
        "n": pa.array([1, 2, 3, None], pa.int64()),
        "flag": pa.array([True, False, None, True]),
        "name": pa.array(["a", "b", None, "d"]),
        "at": pa.array([1, 2, None, 4], pa.timestamp("us", tz="UTC")),
        "full": pa.array([1, 2, 3, 4], pa.int64()),
    }
)


def test_batches_become_the_frame_pandas_reads_from_the_whole_file(tmp_path):
    path = tmp_path / "staged.parquet"
    pq.write_table(STAGED, path)
    whole = pd.read_parquet(path)
    dtypes = local_dtypes(
        dict(STAGED.schema.empty_table().to_pandas().dtypes), {"n", "flag", "name", "at"}
    )

    digest = FrameDigest(dtypes)
    chunks = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2):
        chunks.append(local_frame(batch, dtypes, merged=[]))
        digest.update(chunks[-1])

    assert dict(whole.dtypes) == dtypes
    assert str(dtypes["n"]) == "float64" and str(dtypes["flag"]) == "object"
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole, check_exact=True)
    assert digest.hexdigest() == frame_digest(whole)


def test_a_missing_feature_is_nan_as_pandas_merge_makes_it():
    batch = STAGED.to_batches()[0]
    dtypes = local_dtypes(dict(STAGED.schema.empty_table().to_pandas().dtypes), {"n", "flag"})

    frame = local_frame(batch, dtypes, merged=["name", "flag"])

    assert frame["name"].dtype == object and frame["name"][2] is not None
    assert math.isnan(frame["name"][2]) and math.isnan(frame["flag"][2])
    assert frame["full"].dtype == "int64"
