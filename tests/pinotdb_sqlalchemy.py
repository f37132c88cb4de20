"""Superset's way into a query node: pinotdb's SQLAlchemy dialect
(`pinot+http://...?controller=...`), its inspector listing tables and
columns from the controller API, and a query through the engine. Prints
what it saw as JSON.

usage: pinotdb_sqlalchemy.py <host> <port> <user> <password> <table>
"""
import json
import sys

from sqlalchemy import create_engine, inspect, text

host, port, user, password, table = sys.argv[1:6]
base = f"{host}:{port}"
engine = create_engine(f"pinot+http://{user}:{password}@{base}/query/sql?controller=http://{base}/")
inspector = inspect(engine)
columns = {c["name"]: str(c["type"]) for c in inspector.get_columns(table)}
with engine.connect() as connection:
    rows = connection.execute(text(f"SELECT status, COUNT(*) AS hits FROM {table} GROUP BY status ORDER BY status"))
    rows = [[str(v) for v in row] for row in rows]
print(json.dumps({"tables": inspector.get_table_names(), "columns": columns, "rows": rows}))
