"""A psycopg client of sluice's Postgres wire protocol: a parameterized
query (the extended protocol, parameters bound by the server) and its rows
as JSON lists of strings.

usage: pgwire_psycopg.py <host> <port> <user> <password> <status> <user id>
"""
import json
import sys

import psycopg

host, port, user, password, status, user_id = sys.argv[1:7]
with psycopg.connect(host=host, port=int(port), user=user, password=password, dbname="sluice") as conn:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT user_id, COUNT(*) AS hits FROM clicks WHERE status = %s AND user_id <> %s "
            "GROUP BY user_id ORDER BY user_id",
            (int(status), user_id),
        )
        rows = [[str(v) for v in row] for row in cur.fetchall()]
        names = [d.name for d in cur.description]
    print(json.dumps({"columns": names, "rows": rows}))
