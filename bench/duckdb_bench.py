"""DuckDB baseline for bench/src/query.rs: loads the same rows (an Arrow IPC
file) into an in-memory DuckDB table and times each query warm.

Usage: python3 duckdb_bench.py ROWS.arrow QUERIES.json REPEATS THREADS
Prints {"load_s": ..., "queries": {name: {"median_ms": ..., "rows": ...}}}.
"""
import json
import statistics
import sys
import time

import duckdb
import pyarrow as pa

path, queries_path, repeats, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
queries = json.load(open(queries_path))

started = time.perf_counter()
table = pa.ipc.open_file(path).read_all()
con = duckdb.connect()
con.execute(f"SET threads={threads}")
con.register("source", table)
con.execute("CREATE TABLE clicks AS SELECT * FROM source")
con.unregister("source")
del table
load_s = time.perf_counter() - started

def fetch(result):
    """The result as an Arrow table (the method's name changed across DuckDB versions)."""
    method = getattr(result, "to_arrow_table", None) or getattr(result, "fetch_arrow_table")
    return method()


out = {}
for name, sql in queries.items():
    for _ in range(2):
        fetch(con.execute(sql))
    times = []
    rows = 0
    for _ in range(repeats):
        t = time.perf_counter()
        rows = fetch(con.execute(sql)).num_rows
        times.append((time.perf_counter() - t) * 1000)
    out[name] = {"median_ms": statistics.median(times), "rows": rows}
print(json.dumps({"load_s": load_s, "queries": out}))
