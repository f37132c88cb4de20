"""Replays the statements Postgres tools send about the catalog
(tests/pgwire_tool_queries.sql) over psycopg, the extended protocol, and
prints each one's outcome as JSON: {"<tool>: <what>": rows or {"error": ...}}.

usage: pgwire_catalog.py <host> <port> <user> <password>
"""
import json
import pathlib
import sys

import psycopg

host, port, user, password = sys.argv[1:5]
text = (pathlib.Path(__file__).parent / "pgwire_tool_queries.sql").read_text()
outcomes = {}
with psycopg.connect(host=host, port=int(port), user=user, password=password, dbname="sluice", autocommit=True) as conn:
    for block in text.split("\n;;\n"):
        lines = [l for l in block.strip().splitlines()]
        labels = [l[3:] for l in lines if l.startswith("-- ") and ":" in l]
        label = labels[-1] if labels else None
        sql = "\n".join(l for l in lines if not l.startswith("--")).strip()
        if not sql or label is None:
            continue
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                outcomes[label] = [[None if v is None else str(v) for v in row] for row in cur.fetchall()] if cur.description else []
        except Exception as e:  # the test names each failure
            outcomes[label] = {"error": str(e).splitlines()[0]}
print(json.dumps(outcomes))
