#!/usr/bin/env python3
"""The HTTP API through Python's standard library, as a web application would
use it: streaming uploads (chunked and with a length), downloads, ranges,
conditional requests, listing pagination and a client that disconnects."""
import hashlib
import http.client
import json
import os
import socket
import sys
import urllib.parse

URL, TOKEN = sys.argv[1], sys.argv[2]
u = urllib.parse.urlparse(URL)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def conn():
    return http.client.HTTPConnection(u.hostname, u.port, timeout=120)


def request(method, path, body=None, headers=None, encode_chunked=False):
    c = conn()
    c.request(method, "/v1/default/" + urllib.parse.quote(path), body=body,
              headers={**AUTH, **(headers or {})}, encode_chunked=encode_chunked)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


def generate(total, block=1 << 20, seed=b"s"):
    """Yields `total` pseudo-random bytes in blocks; never holds them all."""
    h = hashlib.sha256(seed).digest()
    sent = 0
    while sent < total:
        n = min(block, total - sent)
        out = (h * (n // 32 + 1))[:n]
        h = hashlib.sha256(h).digest()
        sent += n
        yield out


def sha(chunks):
    d = hashlib.sha256()
    for c in chunks:
        d.update(c)
    return d.hexdigest()


# Streaming uploads: chunked transfer encoding, then with Content-Length.
for size in (0, 1, 70_000, 9_000_001):
    st, _, body = request("PUT", f"py/chunked-{size}", body=generate(size), encode_chunked=True)
    assert st == 201, (size, st, body)
    st, h, data = request("GET", f"py/chunked-{size}")
    assert st == 200 and len(data) == size, (size, st, len(data))
    assert hashlib.sha256(data).hexdigest() == sha(generate(size)), size
    st, _, _ = request("PUT", f"py/len-{size}", body=b"".join(generate(size)), headers={"Content-Length": str(size)})
    assert st == 201

# Ranges across the 4 MiB chunk boundary.
whole = b"".join(generate(9_000_001))
st, h, data = request("GET", "py/chunked-9000001", headers={"Range": "bytes=4194000-4194999"})
assert st == 206 and data == whole[4194000:4195000], st
assert h["content-range"] == "bytes 4194000-4194999/9000001"

# Conditional requests.
st, h, _ = request("HEAD", "py/len-1")
etag = h["etag"]
st, _, _ = request("GET", "py/len-1", headers={"If-None-Match": etag})
assert st == 304, st
st, _, body = request("PUT", "py/len-1", body=b"x", headers={"If-Match": '"' + "0" * 64 + '"'})
assert st == 412 and json.loads(body)["error"] == "precondition_failed"

# Listing with pagination.
for i in range(25):
    request("PUT", f"py/list/{i:03}", body=b"%d" % i)
names, after = [], None
while True:
    q = "list&limit=10" + (f"&after={urllib.parse.quote(after)}" if after else "")
    c = conn()
    c.request("GET", f"/v1/default/py/list?{q}", headers=AUTH)
    page = json.loads(c.getresponse().read())
    names += [e["name"] for e in page["entries"]]
    after = page.get("next_after")
    if not after:
        break
assert names == [f"{i:03}" for i in range(25)], names

# A client that disconnects mid-upload leaves no visible file.
s = socket.create_connection((u.hostname, u.port))
s.sendall(f"PUT /v1/default/py/abandoned HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
          f"Content-Length: 50000000\r\n\r\n".encode())
for block in generate(20_000_000):
    s.sendall(block)
s.close()
st, _, _ = request("GET", "py/abandoned")
assert st == 404, st

# Oversize names and bad tokens give JSON errors.
st, _, body = request("PUT", "py/" + "n" * 300, body=b"x")
assert st == 400 and json.loads(body)["error"] == "invalid_path", (st, body)
c = conn()
c.request("GET", "/v1/default/py/len-1", headers={"Authorization": "Bearer wrong-wrong-wrong"})
r = c.getresponse()
assert r.status == 401 and json.loads(r.read())["error"] == "unauthorized"

# Optional: the `requests` library, where installed.
try:
    import requests
except ImportError:
    requests = None
if requests:
    r = requests.put(f"{URL}/v1/default/py/req.bin", data=generate(5_000_000), headers=AUTH)
    assert r.status_code == 201, r.text
    r = requests.get(f"{URL}/v1/default/py/req.bin", headers=AUTH, stream=True)
    assert sha(r.iter_content(1 << 16)) == sha(generate(5_000_000))
print("python client ok" + (" (with requests)" if requests else ""))
