"""The `pinotdb` client against a query node serving HTTPS with basic auth.

Usage: python3 pinotdb_secure.py HOST PORT USERNAME PASSWORD
Exits non-zero with a message when anything is off.
"""
import json
import ssl
import sys
import urllib.error
import urllib.request

from pinotdb import connect, exceptions

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
insecure = ssl.create_default_context()
insecure.check_hostname = False
insecure.verify_mode = ssl.CERT_NONE


def request(path, body=None, headers=None):
    req = urllib.request.Request(f"https://{host}:{port}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=insecure, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


# Liveness stays open; SQL without credentials is a 401 with a challenge and
# a Pinot-shaped reason.
status, _, _ = request("/health")
assert status == 200, status
status, headers, body = request("/query/sql", json.dumps({"sql": "SELECT 1"}).encode(),
                                {"Content-Type": "application/json"})
assert status == 401, (status, body)
assert headers["WWW-Authenticate"].startswith("Basic"), headers
assert "authentication required" in json.loads(body)["exceptions"][0]["message"], body

conn = connect(host=host, port=port, path="/query/sql", scheme="https",
               username=user, password=password, verify_ssl=False)
cur = conn.cursor()
cur.execute("SELECT 1 + 1 AS two")
assert cur.fetchone()[0] == 2

wrong = connect(host=host, port=port, path="/query/sql", scheme="https",
                username=user, password=password + "-wrong", verify_ssl=False)
try:
    wrong.cursor().execute("SELECT 1")
except exceptions.Error as e:
    assert "authentication required" in str(e), e
else:
    sys.exit("a wrong password was accepted")
print("ok")
