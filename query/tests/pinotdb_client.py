"""Drives a sluice query node with the real `pinotdb` client (DB-API 2.0).

Usage: python3 pinotdb_client.py HOST PORT
Exits non-zero with a message when anything a Pinot client relies on is off.
"""
import datetime
import sys

from pinotdb import connect, exceptions

host, port = sys.argv[1], int(sys.argv[2])
conn = connect(host=host, port=port, path="/query/sql", scheme="http")
cur = conn.cursor()

cur.execute("SELECT country, COUNT(*) AS n, AVG(latency_ms) AS avg_latency FROM clicks "
            "WHERE status = 404 GROUP BY country ORDER BY n DESC, country LIMIT 5")
rows = cur.fetchall()
assert len(rows) == 5, rows
names = [d[0] for d in cur.description]
assert names == ["country", "n", "avg_latency"], cur.description
type_codes = [d[1] for d in cur.description]
# pinotdb maps STRING to Type.STRING and LONG/DOUBLE to Type.NUMBER.
assert str(type_codes[0]).endswith("STRING") and all(str(t).endswith("NUMBER") for t in type_codes[1:]), type_codes
assert all(isinstance(r[1], int) for r in rows), rows
assert all(isinstance(r[2], float) for r in rows), rows
assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True), rows

cur.execute("SELECT ts, user_id, is_bot FROM clicks ORDER BY ts LIMIT 2")
first = cur.fetchone()
assert isinstance(first[0], datetime.datetime), first
assert first[0].year == 2025, first
assert str(cur.description[0][1]).endswith("TIMESTAMP"), cur.description
assert str(cur.description[2][1]).endswith("BOOLEAN"), cur.description
assert len(cur.fetchall()) == 1

cur.execute("SELECT COUNT(*) FROM clicks")
(total,) = cur.fetchone()
assert total == 21501, total

try:
    cur.execute("SELECT * FROM no_such_table")
    raise AssertionError("an unknown table should raise")
except exceptions.DatabaseError as e:
    assert "no_such_table" in str(e), e

print("pinotdb ok")
