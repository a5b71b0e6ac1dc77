"""Edits of generated datasets, for tests and benchmarks: an upstream change touching only some episodes."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def shift_actions(root: str | Path, episodes: Sequence[int], delta: float = 1.0) -> None:
    """Add ``delta`` to the actions of ``episodes`` in place: an upstream edit touching only those episodes.

    Rewrites only the data files that hold them, keeping their schema; tests and benchmarks use it
    to check that exactly the edited episodes are materialized again.
    """
    for file in sorted((Path(root) / "data").rglob("*.parquet")):
        table = pq.read_table(file)
        mask = np.isin(table["episode_index"].to_numpy(), list(episodes))
        if not mask.any():
            continue
        actions = np.stack(table["action"].to_numpy(zero_copy_only=False)).astype(np.float32)
        actions[mask] += np.float32(delta)
        index = table.schema.get_field_index("action")
        field = table.schema.field(index)
        flat = pa.FixedSizeListArray.from_arrays(pa.array(actions.ravel(), pa.float32()), actions.shape[1])
        pq.write_table(table.set_column(index, field, flat.cast(field.type)), file)
