"""How many partitions a many-group aggregation should hash its rows into.

Prices what `query/src/hashed_groups.rs` relies on, with DataFusion's own
Python bindings (the same engine version as sluice): 10M random strings of
`groups` distinct values, grouped on two threads after hashing the rows
into N partitions (partial aggregation skipped, so each partition's table
holds its share of the keys), against DataFusion's default plan (a partial
table per thread, then a merge).

    pip install datafusion==55.0.0 pyarrow numpy
    python3 bench/grouping_partitions.py [groups]
"""

import sys
import time

import datafusion as df
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROWS = 10_000_000


def median_run(ctx, sql, n=7):
    runs = []
    for _ in range(n):
        cpu, wall = time.process_time(), time.perf_counter()
        ctx.sql(sql).collect()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    runs.sort()
    wall, cpu = runs[len(runs) // 2]
    return f"wall {wall * 1000:.0f} ms, cpu {cpu * 1000:.0f} ms"


def main():
    groups = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    ids = np.random.default_rng(1).integers(0, groups, ROWS)
    values = pa.array([f"user-{i:07d}" for i in range(groups)])
    column = pc.take(values, pa.array(ids)).cast(pa.string_view())
    batches = pa.table({"u": column}).to_batches(max_chunksize=8192)
    halves = [batches[: len(batches) // 2], batches[len(batches) // 2 :]]
    sql = "SELECT COUNT(DISTINCT u) FROM t"
    for partitions, hashed_first in [(2, False), (2, True), (16, True), (32, True), (64, True)]:
        config = df.SessionConfig().with_target_partitions(partitions)
        if hashed_first:
            config = config.set("datafusion.execution.skip_partial_aggregation_probe_ratio_threshold", "0.0")
            config = config.set("datafusion.execution.skip_partial_aggregation_probe_rows_threshold", "1000")
        ctx = df.SessionContext(config)
        ctx.register_record_batches("t", halves)
        plan = f"rows hashed into {partitions}" if hashed_first else "DataFusion's default plan"
        print(f"{groups} groups, {plan}: {median_run(ctx, sql)}")


if __name__ == "__main__":
    main()
