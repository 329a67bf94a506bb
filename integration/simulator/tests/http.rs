//! HTTP/1.1 handling: keep-alive, pipelining, chunked bodies, limits and
//! malformed input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read, Write};

use common::*;
use serde_json::Value;

fn chat_body(text: &str) -> Vec<u8> {
    serde_json::to_vec(&chat("m1", text)).unwrap()
}

#[test]
fn keep_alive_and_pipelining() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    let a = c.post_json("/v1/chat/completions", &chat("m1", "first"));
    let b = c.post_json("/v1/chat/completions", &chat("m1", "second"));
    assert_eq!((a.status, b.status), (200, 200));
    assert!(a.header("connection").is_none());
    assert_ne!(content(&a.json(), 0), content(&b.json(), 0));
    assert_eq!(c.request("GET", "/healthz", None).text(), "ok");

    // Two requests in one write; answers come back in order.
    let body = chat_body("pipelined");
    let one = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut both = one.clone().into_bytes();
    both.extend_from_slice(&body);
    both.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    c.send_raw(&both);
    assert_eq!(
        c.read_response().unwrap().json()["object"],
        "chat.completion"
    );
    assert_eq!(c.read_response().unwrap().text(), "ok");
}

#[test]
fn connection_close_is_honoured() {
    let addr = start_default();
    let mut c = Client::connect(addr);
    c.send(
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("bye")),
        &["Connection: close"],
    );
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());

    // HTTP/1.0 closes by default.
    let mut c = Client::connect(addr);
    c.send_raw(b"GET /healthz HTTP/1.0\r\n\r\n");
    let raw = c.read_to_eof();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"));
}

#[test]
fn chunked_request_body_and_expect_continue() {
    let addr = start_default();
    let body = chat_body("chunked body with [sim:answer=chunked ok]");
    let mut c = Client::connect(addr);
    let mut raw =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for piece in body.chunks(7) {
        raw.extend_from_slice(format!("{:X};ext=1\r\n", piece.len()).as_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    c.send_raw(&raw);
    let r = c.read_response().unwrap();
    assert_eq!(content(&r.json(), 0), "chunked ok");
    // The connection is still in sync.
    assert_eq!(c.request("GET", "/healthz", None).status, 200);

    // Expect: 100-continue gets an interim response before the body is sent.
    let body = chat_body("[sim:answer=continued]");
    let mut c = Client::connect(addr);
    c.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let mut interim = [0u8; 25];
    c.stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send_raw(&body);
    assert_eq!(content(&c.read_response().unwrap().json(), 0), "continued");
}

#[test]
fn header_names_are_case_insensitive() {
    let addr = start_default();
    let body = chat_body("[sim:answer=case]");
    let mut c = Client::connect(addr);
    c.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhOsT: x\r\nCONTENT-LENGTH: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.send_raw(&body);
    assert_eq!(content(&c.read_response().unwrap().json(), 0), "case");
}

/// Sends raw bytes, expects `status` with a JSON error and a closed connection.
fn expect_error_and_close(addr: std::net::SocketAddr, raw: &[u8], status: u16) {
    let mut c = Client::connect(addr);
    c.stream.write_all(raw).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(
        r.status,
        status,
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(80)])
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.json()["error"]["message"].is_string());
    assert!(c.is_closed());
}

#[test]
fn limits_and_malformed_requests() {
    let addr = start_default();
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    expect_error_and_close(addr, big_header.as_bytes(), 431);
    expect_error_and_close(
        addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 67108865\r\n\r\n",
        413,
    );
    expect_error_and_close(
        addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4000001\r\n",
        413,
    );
    expect_error_and_close(
        addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
        413,
    );
    for raw in [
        &b"NONSENSE\r\n\r\n"[..],
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno-colon-here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
        b"\xff\xfe\xfd / HTTP/1.1\r\n\r\n",
    ] {
        expect_error_and_close(addr, raw, 400);
    }
    expect_error_and_close(
        addr,
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    );
    // A large body is read completely (and then rejected only as bad JSON).
    let mut c = Client::connect(addr);
    let r = c.request("POST", "/v1/chat/completions", Some(&vec![b' '; 1 << 20]));
    assert_eq!(r.status, 400);
    // The server is fine after all that.
    assert_eq!(get(addr, "/healthz").status, 200);
}

#[test]
fn abrupt_clients_do_not_hurt_the_server() {
    let addr = start_default();
    // Partial head, partial body, and a client that leaves mid-stream.
    for raw in [
        &b"POST /v1/chat/completions HTTP/1.1\r\nContent-Le"[..],
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"model\"",
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ] {
        let mut c = Client::connect(addr);
        c.send_raw(raw);
        drop(c);
    }
    let mut req = chat("m1", "stream then vanish");
    req["stream"] = Value::Bool(true);
    let mut c = Client::connect(addr);
    c.send(
        "POST",
        "/v1/chat/completions",
        Some(&serde_json::to_vec(&req).unwrap()),
        &[],
    );
    drop(c);
    // Binary junk is rejected as soon as its first line is complete.
    let mut junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    junk.extend_from_slice(b"\r\n");
    expect_error_and_close(addr, &junk, 400);
    // Junk that never ends its first line is cut off at the head limit.
    let junk = vec![b'x'; 70 * 1024];
    expect_error_and_close(addr, &junk, 431);
    assert_eq!(get(addr, "/healthz").text(), "ok");
}
