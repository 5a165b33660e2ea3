#!/usr/bin/env bash
# HTTP API through curl: what a shell user or an nginx-style client does.
# Usage: curl_suite.sh URL TOKEN READ_TOKEN
set -euo pipefail
URL=$1 TOKEN=$2 READ_TOKEN=$3
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
A="Authorization: Bearer $TOKEN"
fail() { echo "FAIL: $*" >&2; exit 1; }
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
b3() { b3sum --no-names "$1" 2>/dev/null || python3 -c 'import sys;print(open(sys.argv[1],"rb").read().hex())' "$1"; }

for size in 0 1 65536 65537 4194304 4194305 20000000; do
  head -c $size /dev/urandom >"$T/up"
  c=$(code -X PUT -H "$A" --data-binary @"$T/up" "$URL/v1/default/curl/$size.bin")
  [[ $c == 201 ]] || fail "PUT $size gave $c"
  curl -sf -H "$A" "$URL/v1/default/curl/$size.bin" -o "$T/down" || fail "GET $size"
  cmp -s "$T/up" "$T/down" || fail "content of $size differs"
done
# curl -T (upload-file) and a replace.
head -c 3000000 /dev/urandom >"$T/up"
[[ $(code -H "$A" -T "$T/up" "$URL/v1/default/curl/t.bin") == 201 ]] || fail "curl -T"
[[ $(code -H "$A" -T "$T/up" "$URL/v1/default/curl/t.bin") == 200 ]] || fail "curl -T replace"
# Range and suffix range.
curl -sf -H "$A" -r 100-199 "$URL/v1/default/curl/t.bin" -o "$T/r" || fail "range"
cmp -s "$T/r" <(tail -c +101 "$T/up" | head -c 100) || fail "range bytes"
curl -sf -H "$A" -H 'Range: bytes=-10' "$URL/v1/default/curl/t.bin" -o "$T/r" || fail "suffix range"
cmp -s "$T/r" <(tail -c 10 "$T/up") || fail "suffix range bytes"
[[ $(code -H "$A" -r 3000000- "$URL/v1/default/curl/t.bin") == 416 ]] || fail "416"
# Resume a download with curl -C -.
head -c 1000 "$T/up" >"$T/resume"
curl -sf -H "$A" -C - "$URL/v1/default/curl/t.bin" -o "$T/resume" || fail "resume"
cmp -s "$T/resume" "$T/up" || fail "resumed bytes"
# HEAD.
curl -sfI -H "$A" "$URL/v1/default/curl/t.bin" | tr -d '\r' | grep -qi '^content-length: 3000000$' || fail "HEAD length"
# ETag round trip, and the ETag is the BLAKE3 of the content when b3sum exists.
etag=$(curl -sfI -H "$A" "$URL/v1/default/curl/t.bin" | tr -d '\r' | sed -n 's/^[Ee][Tt][Aa][Gg]: //p')
if command -v b3sum >/dev/null; then [[ $etag == "\"$(b3sum --no-names "$T/up")\"" ]] || fail "etag $etag"; fi
[[ $(code -H "$A" -H "If-None-Match: $etag" "$URL/v1/default/curl/t.bin") == 304 ]] || fail "304"
[[ $(code -X PUT -H "$A" -H 'If-None-Match: *' --data-binary x "$URL/v1/default/curl/t.bin") == 412 ]] || fail "create-only"
# Content-Type stored from the upload, and guessed otherwise.
curl -sf -X PUT -H "$A" -H 'Content-Type: image/png' --data-binary x "$URL/v1/default/curl/img" >/dev/null
curl -sfI -H "$A" "$URL/v1/default/curl/img" | tr -d '\r' | grep -qi '^content-type: image/png$' || fail "content-type stored"
curl -sf -X PUT -H "$A" --data-binary '{}' "$URL/v1/default/curl/x.json" >/dev/null
curl -sfI -H "$A" "$URL/v1/default/curl/x.json" | tr -d '\r' | grep -qi '^content-type: application/json$' || fail "content-type guessed"
# Traversal, auth.
[[ $(code --path-as-is -X PUT -H "$A" --data-binary x "$URL/v1/default/curl/../../etc/x") == 400 ]] || fail "traversal"
[[ $(code -H "Authorization: Bearer nope-nope-nope-nope" "$URL/v1/default/curl/t.bin") == 401 ]] || fail "bad token"
[[ $(code -X PUT -H "Authorization: Bearer $READ_TOKEN" --data-binary x "$URL/v1/default/curl/ro") == 403 ]] || fail "read token writes"
[[ $(code -H "Authorization: Bearer $READ_TOKEN" "$URL/v1/default/curl/t.bin") == 200 ]] || fail "read token reads"
# Errors are JSON.
curl -s -H "$A" "$URL/v1/default/curl/missing" | python3 -c 'import json,sys; b=json.load(sys.stdin); assert b["error"]=="not_found" and b["message"], b' || fail "error body"
# mkdir, rename, stat, list, delete.
[[ $(code -X POST -H "$A" "$URL/v1/default/curl/sub?mkdir") == 201 ]] || fail "mkdir"
[[ $(code -X POST -H "$A" "$URL/v1/default/curl/t.bin?rename=curl/sub/t2.bin") == 200 ]] || fail "rename"
curl -sf -H "$A" "$URL/v1/default/curl/sub/t2.bin?stat" | python3 -c 'import json,sys; s=json.load(sys.stdin); assert s["size"]==3000000 and s["kind"]=="file", s' || fail "stat"
curl -sf -H "$A" "$URL/v1/default/curl/?list&limit=2" | python3 -c 'import json,sys; l=json.load(sys.stdin); assert len(l["entries"])==2 and l["next_after"], l' || fail "list page"
[[ $(code -X DELETE -H "$A" "$URL/v1/default/curl/sub") == 409 ]] || fail "delete non-empty"
[[ $(code -X DELETE -H "$A" "$URL/v1/default/curl/sub/t2.bin") == 204 ]] || fail "delete"
[[ $(code -H "$A" "$URL/v1/default/curl/sub/t2.bin") == 404 ]] || fail "gone"
echo "curl suite ok"
