//! The HTTP API against a real `cairn-server`, driven with reqwest.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_tests::{Server, ServerOptions, random_bytes};
use futures::StreamExt;
use reqwest::{Client, StatusCode, header};

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// A request to `path` in the default share with the read-write token.
fn req(s: &Server, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    client()
        .request(method, s.object_url(path))
        .header(header::AUTHORIZATION, s.auth())
}

async fn put(s: &Server, path: &str, data: Vec<u8>) -> reqwest::Response {
    req(s, reqwest::Method::PUT, path)
        .body(data)
        .send()
        .await
        .unwrap()
}

async fn get(s: &Server, path: &str) -> reqwest::Response {
    req(s, reqwest::Method::GET, path).send().await.unwrap()
}

async fn delete(s: &Server, path: &str) -> reqwest::Response {
    req(s, reqwest::Method::DELETE, path).send().await.unwrap()
}

async fn error_code(resp: reqwest::Response) -> String {
    let v: serde_json::Value = resp.json().await.expect("error body is JSON");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without message: {v}"
    );
    v["error"].as_str().unwrap_or_default().to_owned()
}

/// Uploads `len` pseudo-random bytes as a stream and returns their BLAKE3.
async fn put_streamed(
    s: &Server,
    path: &str,
    len: u64,
    seed: u64,
) -> (StatusCode, blake3::Hash, Option<String>) {
    const BLOCK: u64 = 1 << 20;
    let mut hasher = blake3::Hasher::new();
    let blocks: Vec<u64> = (0..len.div_ceil(BLOCK)).collect();
    for &i in &blocks {
        let n = BLOCK.min(len - i * BLOCK) as usize;
        hasher.update(&random_bytes(n, seed.wrapping_add(i)));
    }
    let stream = futures::stream::iter(blocks).map(move |i| {
        let n = BLOCK.min(len - i * BLOCK) as usize;
        Ok::<_, std::io::Error>(Bytes::from(random_bytes(n, seed.wrapping_add(i))))
    });
    let resp = req(s, reqwest::Method::PUT, path)
        .header(header::CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let etag = resp
        .headers()
        .get(header::ETAG)
        .map(|v| v.to_str().unwrap().to_owned());
    (resp.status(), hasher.finalize(), etag)
}

/// Downloads as a stream, returning (status, BLAKE3, length, ETag header).
async fn get_hashed(s: &Server, path: &str) -> (StatusCode, blake3::Hash, u64, Option<String>) {
    let resp = get(s, path).await;
    let status = resp.status();
    let etag = resp
        .headers()
        .get(header::ETAG)
        .map(|v| v.to_str().unwrap().to_owned());
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(block) = body.next().await {
        let block = block.unwrap();
        len += block.len() as u64;
        hasher.update(&block);
    }
    (status, hasher.finalize(), len, etag)
}

#[tokio::test]
async fn round_trips_of_every_size() {
    let s = Server::start();
    let sizes = [0u64, 1, 65_536, 65_537, 4 << 20, (4 << 20) + 1, 300 << 20];
    for (i, &size) in sizes.iter().enumerate() {
        let path = format!("sizes/{size}.bin");
        let (status, sent, etag) = put_streamed(&s, &path, size, i as u64 * 1000).await;
        assert_eq!(status, StatusCode::CREATED, "PUT {size}");
        assert_eq!(
            etag.as_deref(),
            Some(format!("\"{}\"", sent.to_hex()).as_str())
        );
        let (status, got, len, etag2) = get_hashed(&s, &path).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(len, size, "GET length of {size}");
        assert_eq!(got, sent, "GET content of {size}");
        assert_eq!(etag2, etag);
    }
    // Inline files (up to 64 KiB) make no chunk files; 64 KiB + 1 and
    // 4 MiB make one each, 4 MiB + 1 two, 300 MiB 75.
    assert_eq!(s.chunk_files(), 1 + 1 + 2 + 75);
}

#[tokio::test]
async fn overwrite_is_atomic_and_replaces_content() {
    let s = Server::start();
    assert_eq!(
        put(&s, "f", random_bytes(5 << 20, 1)).await.status(),
        StatusCode::CREATED
    );
    let second = random_bytes(100, 2);
    assert_eq!(put(&s, "f", second.clone()).await.status(), StatusCode::OK);
    assert_eq!(get(&s, "f").await.bytes().await.unwrap(), second);
}

#[tokio::test]
async fn ranges() {
    let s = Server::start();
    let data = random_bytes(10 << 20, 7);
    put(&s, "r.bin", data.clone()).await;
    let size = data.len() as u64;
    let cases: [(&str, u64, u64); 6] = [
        ("bytes=0-0", 0, 0),
        ("bytes=4194300-4194310", 4_194_300, 4_194_310),
        ("bytes=4194304-", 4_194_304, size - 1),
        ("bytes=-5", size - 5, size - 1),
        ("bytes=8388000-99999999", 8_388_000, size - 1),
        ("bytes=100-8388700", 100, 8_388_700),
    ];
    for (range, start, end) in cases {
        let resp = req(&s, reqwest::Method::GET, "r.bin")
            .header(header::RANGE, range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let cr = resp.headers()[header::CONTENT_RANGE]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(cr, format!("bytes {start}-{end}/{size}"));
        let body = resp.bytes().await.unwrap();
        assert_eq!(&body[..], &data[start as usize..=end as usize], "{range}");
    }
    let resp = req(&s, reqwest::Method::GET, "r.bin")
        .header(header::RANGE, format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        resp.headers()[header::CONTENT_RANGE].to_str().unwrap(),
        format!("bytes */{size}")
    );
    assert_eq!(error_code(resp).await, "range_not_satisfiable");
    // Several ranges: served whole.
    let resp = req(&s, reqwest::Method::GET, "r.bin")
        .header(header::RANGE, "bytes=0-1,5-6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len(), data.len());
    // Ranges on inline files.
    put(&s, "small", b"0123456789".to_vec()).await;
    let resp = req(&s, reqwest::Method::GET, "small")
        .header(header::RANGE, "bytes=-3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), "789");
}

#[tokio::test]
async fn conditional_requests() {
    let s = Server::start();
    let c = client();
    let resp = put(&s, "c.txt", b"one".to_vec()).await;
    let etag = resp.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", blake3::hash(b"one").to_hex()));
    let with = |m: reqwest::Method, h: header::HeaderName, v: &str| {
        c.request(m, s.object_url("c.txt"))
            .header(header::AUTHORIZATION, s.auth())
            .header(h, v.to_owned())
    };
    let r = with(reqwest::Method::GET, header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()[header::ETAG].to_str().unwrap(), etag);
    let r = with(reqwest::Method::GET, header::IF_NONE_MATCH, "\"abc\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = with(reqwest::Method::GET, header::IF_MATCH, "\"abc\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let lm = get(&s, "c.txt").await.headers()[header::LAST_MODIFIED]
        .to_str()
        .unwrap()
        .to_owned();
    let r = with(reqwest::Method::GET, header::IF_MODIFIED_SINCE, &lm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // Create-only PUT.
    let r = with(reqwest::Method::PUT, header::IF_NONE_MATCH, "*")
        .body("two")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(error_code(r).await, "precondition_failed");
    let r = c
        .put(s.object_url("new.txt"))
        .header(header::AUTHORIZATION, s.auth())
        .header(header::IF_NONE_MATCH, "*")
        .body("n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Compare-and-swap PUT, large enough to be chunked: refused before the body.
    let r = with(reqwest::Method::PUT, header::IF_MATCH, "\"00\"")
        .body(random_bytes(5 << 20, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = with(reqwest::Method::PUT, header::IF_MATCH, &etag)
        .body("two")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(get(&s, "c.txt").await.text().await.unwrap(), "two");
    // Conditional DELETE.
    let r = with(reqwest::Method::DELETE, header::IF_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(get(&s, "c.txt").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn listing_pagination_over_ten_thousand_entries() {
    let s = Server::start();
    let names: Vec<String> = (0..10_000).map(|i| format!("f{i:05}")).collect();
    let started = Instant::now();
    futures::stream::iter(names.clone())
        .map(|n| {
            let s = &s;
            async move {
                let r = put(s, &format!("many/{n}"), n.clone().into_bytes()).await;
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    println!("10000 small PUTs in {:?}", started.elapsed());
    for limit in [1000usize, 777] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut url = format!("{}?list&limit={limit}", s.object_url("many"));
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let v: serde_json::Value = client()
                .get(url)
                .header(header::AUTHORIZATION, s.auth())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            pages += 1;
            let entries = v["entries"].as_array().unwrap();
            assert!(entries.len() <= limit);
            seen.extend(
                entries
                    .iter()
                    .map(|e| e["name"].as_str().unwrap().to_owned()),
            );
            match v["next_after"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, names, "limit {limit}");
        assert_eq!(pages, 10_000usize.div_ceil(limit));
    }
    let r = client()
        .get(format!("{}?list&limit=10001", s.object_url("many")))
        .header(header::AUTHORIZATION, s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn namespace_operations() {
    let s = Server::start();
    let c = client();
    let post = |path: &str, q: &str| {
        c.post(format!("{}?{q}", s.object_url(path)))
            .header(header::AUTHORIZATION, s.auth())
    };
    assert_eq!(
        post("d1/d2", "mkdir").send().await.unwrap().status(),
        StatusCode::CREATED
    );
    let r = post("d1/d2", "mkdir").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "already_exists");
    put(&s, "d1/d2/a.txt", b"hello".to_vec()).await;
    put(&s, "d1/b.txt", b"bee".to_vec()).await;

    let st: serde_json::Value = c
        .get(format!("{}?stat", s.object_url("d1/d2/a.txt")))
        .header(header::AUTHORIZATION, s.auth())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["kind"], "file");
    assert_eq!(st["size"], 5);
    assert_eq!(st["etag"], blake3::hash(b"hello").to_hex().as_str());
    assert_eq!(st["content_type"], "text/plain");
    let st: serde_json::Value = c
        .get(format!("{}?stat", s.object_url("d1")))
        .header(header::AUTHORIZATION, s.auth())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["kind"], "directory");
    assert_eq!(st["nlink"], 3);

    // Rename a file, refuse to replace with noreplace, then replace.
    let r = post("d1/b.txt", "rename=d1/d2/c.txt").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let moved: serde_json::Value = r.json().await.unwrap();
    assert_eq!(moved["path"], "d1/d2/c.txt");
    assert_eq!(moved["created"], true);
    assert_eq!(moved["size"], 3);
    assert_eq!(moved["etag"], blake3::hash(b"bee").to_hex().as_str());
    assert_eq!(get(&s, "d1/b.txt").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&s, "d1/d2/c.txt").await.text().await.unwrap(), "bee");
    let r = post("d1/d2/c.txt", "rename=d1/d2/a.txt&noreplace")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(get(&s, "d1/d2/a.txt").await.text().await.unwrap(), "hello");
    assert_eq!(
        post("d1/d2/c.txt", "rename=d1/d2/a.txt")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(get(&s, "d1/d2/a.txt").await.text().await.unwrap(), "bee");
    // A directory cannot move into itself; it can move elsewhere with its contents.
    let r = post("d1", "rename=d1/d2/x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        post("d1", "rename=moved/d1").send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        get(&s, "moved/d1/d2/a.txt").await.text().await.unwrap(),
        "bee"
    );
    // Names with spaces and unicode, through percent-encoding.
    assert_eq!(
        put(&s, "moved/sp%20ace%20%C3%BC.txt", b"u".to_vec())
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = post(
        "moved/sp%20ace%20%C3%BC.txt",
        "rename=moved/plain%2Bplus.txt",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        get(&s, "moved/plain+plus.txt").await.text().await.unwrap(),
        "u"
    );

    // Delete: non-empty directory refused, file then directory removed.
    let r = delete(&s, "moved/d1/d2").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "not_empty");
    let r = delete(&s, "moved/d1/d2/a.txt").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = delete(&s, "moved/d1/d2").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = delete(&s, "moved/d1/d2").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // A file in the way of a directory path.
    let r = put(&s, "moved/plain+plus.txt/inner", b"x".to_vec()).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(r).await, "not_directory");
    // PUT over a directory.
    let r = put(&s, "moved", b"x".to_vec()).await;
    assert_eq!(error_code(r).await, "is_directory");
    // GET of a directory lists it.
    let v: serde_json::Value = get(&s, "moved/").await.json().await.unwrap();
    let names: Vec<_> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["d1", "plain+plus.txt"]);
}

#[tokio::test]
async fn auth_and_service_routes() {
    let s = Server::start();
    let c = client();
    put(&s, "a", b"x".to_vec()).await;
    let r = c.get(s.object_url("a")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "unauthorized");
    let r = c
        .get(s.object_url("a"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(s.object_url("a"))
        .header(header::AUTHORIZATION, "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Read-only token: reads yes, writes no.
    let r = c
        .get(s.object_url("a"))
        .bearer_auth(&s.read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for req in [
        c.put(s.object_url("b")).body("y"),
        c.delete(s.object_url("a")),
        c.post(format!("{}?mkdir", s.object_url("d"))),
    ] {
        let r = req.bearer_auth(&s.read_token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(error_code(r).await, "forbidden");
    }
    // Another share's token.
    let r = c
        .get(s.object_url("a"))
        .bearer_auth(&s.other_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .get(format!("{}/v1/other/", s.url))
        .bearer_auth(&s.other_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(get(&s, "a").await.text().await.unwrap(), "x");
    assert_eq!(get(&s, "b").await.status(), StatusCode::NOT_FOUND);

    let h: serde_json::Value = c
        .get(format!("{}/health", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let spec: serde_json::Value = c
        .get(format!("{}/v1/openapi.json", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/v1/{share}/{path}"]["put"].is_object());
    let m = c
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("cairn_http_requests_total"), "{m}");
    assert!(m.contains("cairn_meta_commit_groups_total"));
    let r = c.get(format!("{}/nope", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Sends a raw HTTP request and returns the status line's code.
fn raw_status(s: &Server, request: &[u8]) -> u16 {
    let mut tcp = TcpStream::connect(s.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.write_all(request).unwrap();
    let mut buf = [0u8; 64];
    let n = tcp.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn bad_paths_are_refused_and_store_nothing() {
    let s = Server::start();
    let long_name = "n".repeat(256);
    let long_path = vec!["p".repeat(200); 21].join("/");
    for path in [
        "a//b",
        "a%00b",
        "a%5Cb",
        "a%2Fb",
        long_name.as_str(),
        long_path.as_str(),
        "a%ZZ",
        "a%0Ab",
    ] {
        let url = format!("{}/v1/default/{path}", s.url);
        let r = client()
            .put(url)
            .header(header::AUTHORIZATION, s.auth())
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(error_code(r).await, "invalid_path", "{path}");
    }
    // HTTP clients normalize dot segments; send raw bytes as curl --path-as-is does.
    for path in [
        "a/../b",
        "..",
        "a/./b",
        "%2E%2E/x",
        "bars/../../etc/x",
        "a\\b",
        ".",
    ] {
        let req = format!(
            "PUT /v1/default/{path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 1\r\n\r\nx",
            s.auth()
        );
        assert_eq!(raw_status(&s, req.as_bytes()), 400, "{path}");
    }
    let r = client()
        .put(format!("{}/v1/BAD/x", s.url))
        .header(header::AUTHORIZATION, s.auth())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = client()
        .get(format!("{}?bogus", s.object_url("")))
        .header(header::AUTHORIZATION, s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = req(&s, reqwest::Method::PUT, "dir/")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // Nothing was created by any of it.
    let v: serde_json::Value = get(&s, "").await.json().await.unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(s.chunk_files(), 0);
}

#[tokio::test]
async fn oversize_and_short_bodies_leave_data_intact() {
    let s = Server::start_with(ServerOptions {
        upload_bytes_max: 6 << 20,
        gc_grace_secs: 1,
        gc_interval_secs: 1,
        ..Default::default()
    });
    let original = random_bytes(5 << 20, 11);
    assert_eq!(
        put(&s, "keep.bin", original.clone()).await.status(),
        StatusCode::CREATED
    );
    // Announced too large: refused before the body.
    let r = put(&s, "keep.bin", random_bytes((6 << 20) + 1, 12)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "payload_too_large");
    // Streamed without a length and too large: refused mid-stream.
    let stream = futures::stream::iter(
        (0..8).map(|i| Ok::<_, std::io::Error>(Bytes::from(random_bytes(1 << 20, 20 + i)))),
    );
    let r = req(&s, reqwest::Method::PUT, "keep.bin")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("the server drains a refused body, so the client reads the answer");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Body shorter than its Content-Length, then the client goes away.
    let mut tcp = TcpStream::connect(s.addr).unwrap();
    let head = format!(
        "PUT /v1/default/keep.bin HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 5000000\r\n\r\n",
        s.auth()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    tcp.write_all(&random_bytes(4_500_000, 13)).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let mut resp = String::new();
    let _ = tcp.read_to_string(&mut resp);
    drop(tcp);
    // A short body of a new file: never becomes visible.
    let mut tcp = TcpStream::connect(s.addr).unwrap();
    let head = format!(
        "PUT /v1/default/partial.bin HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 6000000\r\n\r\n",
        s.auth()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    tcp.write_all(&random_bytes(5_000_000, 14)).unwrap();
    drop(tcp);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&s, "keep.bin").await.bytes().await.unwrap(), original);
    assert_eq!(get(&s, "partial.bin").await.status(), StatusCode::NOT_FOUND);
    // Orphaned chunks are reclaimed once the grace period is over; the
    // chunks of keep.bin stay.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.chunk_files() != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.chunk_files(), 2, "only keep.bin's two chunks remain");
    assert_eq!(get(&s, "keep.bin").await.bytes().await.unwrap(), original);
}

#[tokio::test]
async fn gc_and_dedup() {
    let s = Server::start_with(ServerOptions {
        gc_grace_secs: 1,
        gc_interval_secs: 1,
        ..Default::default()
    });
    let data = random_bytes(9 << 20, 5);
    put(&s, "one", data.clone()).await;
    put(&s, "two", data.clone()).await;
    assert_eq!(s.chunk_files(), 3, "identical chunks are stored once");
    delete(&s, "one").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.chunk_files(), 3, "still referenced by 'two'");
    assert_eq!(get(&s, "two").await.bytes().await.unwrap(), data);
    put(&s, "two", b"small now".to_vec()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.chunk_files() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        s.chunk_files(),
        0,
        "unreferenced chunks are collected after the grace period"
    );
    // Uploading the same content again after GC works.
    put(&s, "three", data.clone()).await;
    assert_eq!(get(&s, "three").await.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn corrupt_chunks_are_never_served() {
    let s = Server::start_with(ServerOptions {
        allowed_errors: vec!["corrupt".into()],
        ..Default::default()
    });
    let data = random_bytes(10 << 20, 9);
    put(&s, "c.bin", data.clone()).await;
    let first = blake3::hash(&data[..4 << 20]).to_hex().to_string();
    let last = blake3::hash(&data[8 << 20..]).to_hex().to_string();
    let flip = |name: &str| {
        let path = s
            .chunk_paths()
            .into_iter()
            .find(|p| p.ends_with(name))
            .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
    };

    // A bad chunk after the first: the response is cut short, and what
    // arrived before the cut is good data.
    flip(&last);
    let resp = get(&s, "c.bin").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut received = Vec::new();
    let mut body = resp.bytes_stream();
    let mut failed = false;
    while let Some(block) = body.next().await {
        match block {
            Ok(b) => received.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a download of corrupt data must fail");
    assert!(received.len() <= 8 << 20);
    assert_eq!(&received[..], &data[..received.len()]);

    // A bad first chunk: a clean 500 with a JSON error, for ranges too.
    flip(&first);
    let r = get(&s, "c.bin").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(r).await, "corrupt");
    let r = req(&s, reqwest::Method::GET, "c.bin")
        .header(header::RANGE, "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "corrupt");
    let m = client()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("cairn_chunk_corrupt_total") && !l.ends_with(" 0")),
        "{m}"
    );
}

#[tokio::test]
async fn tokens_removed_from_the_configuration_are_revoked() {
    let mut s = Server::start();
    let c = client();
    put(&s, "a", b"x".to_vec()).await;
    let old = s.read_token.clone();
    let r = c
        .get(s.object_url("a"))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.read_token = format!("ro-new-{:032x}", 7u128);
    assert_eq!(s.stop(), Some(0));
    s.restart();
    // A new client: the old one's pooled connections died with the server.
    let c = client();
    let r = c
        .get(s.object_url("a"))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(s.object_url("a"))
        .bearer_auth(&s.read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn strong_and_weak_etag_comparison() {
    let s = Server::start();
    let c = client();
    let etag = put(&s, "e", b"e".to_vec()).await.headers()[header::ETAG]
        .to_str()
        .unwrap()
        .to_owned();
    let weak = format!("W/{etag}");
    // If-Match compares strongly: a weak tag never matches.
    let r = c
        .put(s.object_url("e"))
        .header(header::AUTHORIZATION, s.auth())
        .header(header::IF_MATCH, &weak)
        .body("f")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    // If-None-Match compares weakly, and list headers may span lines.
    let r = c
        .get(s.object_url("e"))
        .header(header::AUTHORIZATION, s.auth())
        .header(header::IF_NONE_MATCH, "\"other\"")
        .header(header::IF_NONE_MATCH, &weak)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    // DELETE of a file through a directory URL is refused.
    let r = delete(&s, "e/").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(get(&s, "e").await.text().await.unwrap(), "e");
}

#[tokio::test]
async fn download_memory_is_bounded_across_clients() {
    let s = Server::start_with(ServerOptions {
        body_idle_timeout_secs: 2,
        extra_config: "download_buffer_bytes_max = 4194304".into(),
        ..Default::default()
    });
    let data = random_bytes(24 << 20, 21);
    put(&s, "big", data.clone()).await;
    // A client that stops reading holds the only chunk buffer...
    let stalled = get(&s, "big").await;
    assert_eq!(stalled.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // ...so another download waits, then gets a retryable 503.
    let r = get(&s, "big").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(error_code(r).await, "unavailable");
    // Once the first client reads on, both complete.
    assert_eq!(stalled.bytes().await.unwrap(), data);
    assert_eq!(get(&s, "big").await.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_connections_are_limited() {
    let s = Server::start_with(ServerOptions {
        extra_config: "http_header_timeout_secs = 2\nhttp_connections_max = 3".into(),
        ..Default::default()
    });
    // A client that never finishes its headers is disconnected.
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after the header timeout"
    );
    // So is one that connects and sends nothing at all.
    let mut silent = TcpStream::connect(s.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let _ = silent.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "silent connection closed"
    );

    // Three idle keep-alive connections fill the limit: a fourth client is
    // not served until one of them goes away.
    let raw_health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(raw_health).unwrap();
        let mut b = [0u8; 512];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(c.read(&mut b).unwrap() > 0);
        held.push(c);
    }
    let mut fourth = TcpStream::connect(s.addr).unwrap();
    fourth.write_all(raw_health).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut b = [0u8; 512];
    assert!(
        fourth.read(&mut b).is_err(),
        "no answer while the limit is reached"
    );
    drop(held.pop());
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = fourth.read(&mut b).unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn if_range_honours_a_range_only_for_the_current_version() {
    let s = Server::start();
    let etag = put(&s, "r", b"0123456789".to_vec()).await.headers()[header::ETAG]
        .to_str()
        .unwrap()
        .to_owned();
    let ranged = |validator: String| {
        req(&s, reqwest::Method::GET, "r")
            .header(header::RANGE, "bytes=2-4")
            .header(header::IF_RANGE, validator)
            .send()
    };
    let r = ranged(etag).await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text().await.unwrap(), "234");
    // Another version (or a date, which is not trusted): the whole file.
    for other in [
        "\"0000\"".to_owned(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    ] {
        let r = ranged(other).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "0123456789");
    }
}
