//! Shared helpers: an in-process simulator and a tiny HTTP/1.1 client.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use looper_sim::{Config, Server};
use serde_json::{json, Value};

/// Models used across the tests. Latencies are zero so nothing waits
/// unless a test asks for it.
pub const TEST_CONFIG: &str = r#"{
  "seed": 42,
  "models": {
    "m1": {"answer_words": 12, "mean_logprob": -0.3, "hang_ms": 300,
           "slow_chunk_bytes": 64, "slow_interval_ms": 1},
    "m2": {"answer_words": 8, "mean_logprob": -1.0},
    "nolp": {"logprobs": false, "answer_words": 5}
  }
}"#;

pub fn start(config: &str) -> SocketAddr {
    let config = Config::from_json_str(config).unwrap();
    Server::bind(config, "127.0.0.1:0")
        .unwrap()
        .spawn()
        .unwrap()
}

pub fn start_default() -> SocketAddr {
    start(TEST_CONFIG)
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, method: &str, path: &str, body: Option<&[u8]>, extra: &[&str]) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: sim\r\n");
        for h in extra {
            req.push_str(h);
            req.push_str("\r\n");
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body.unwrap_or(b""));
        self.send_raw(&bytes);
    }

    pub fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
        self.send(method, path, body, &[]);
        self.read_response().unwrap()
    }

    pub fn post_json(&mut self, path: &str, v: &Value) -> Resp {
        self.request("POST", path, Some(&serde_json::to_vec(v).unwrap()))
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn need(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads the status line and headers (skipping `100 Continue`).
    pub fn read_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        loop {
            let end = loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i;
                }
                if self.fill()? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            };
            let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
            self.buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap();
            assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
            let status: u16 = status_line[9..12].parse().unwrap();
            let headers = lines
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.trim().to_ascii_lowercase(), v.trim().to_string())
                })
                .collect();
            if status != 100 {
                return Ok((status, headers));
            }
        }
    }

    pub fn read_response(&mut self) -> io::Result<Resp> {
        let (status, headers) = self.read_head()?;
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if resp.header("transfer-encoding") == Some("chunked") {
            assert!(resp.header("content-length").is_none());
            loop {
                let line = String::from_utf8(self.line()?).unwrap();
                let size = usize::from_str_radix(line.trim(), 16).unwrap();
                if size == 0 {
                    assert_eq!(self.line()?, b"");
                    break;
                }
                self.need(size + 2)?;
                resp.body.extend_from_slice(&self.buf[..size]);
                assert_eq!(&self.buf[size..size + 2], b"\r\n");
                self.buf.drain(..size + 2);
            }
        } else {
            let len: usize = resp
                .header("content-length")
                .expect("response without content-length or chunked")
                .parse()
                .unwrap();
            self.need(len)?;
            resp.body = self.buf.drain(..len).collect();
        }
        Ok(resp)
    }

    /// Everything the server sends until it closes the connection.
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        self.stream.read_to_end(&mut out).unwrap();
        out
    }

    /// True once the server has closed the connection (EOF or reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// One request on a fresh connection.
pub fn post(addr: SocketAddr, v: &Value) -> Resp {
    Client::connect(addr).post_json("/v1/chat/completions", v)
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    Client::connect(addr).request("GET", path, None)
}

pub fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

pub fn content(v: &Value, i: usize) -> String {
    v["choices"][i]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The same tokenisation the simulator uses: words, later ones with a
/// leading space.
pub fn split_tokens(s: &str) -> Vec<String> {
    s.split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// A parsed SSE stream: the JSON of every `data:` event, and whether it
/// ended with `[DONE]`.
pub struct Sse {
    pub events: Vec<Value>,
    pub done: bool,
}

pub fn parse_sse(body: &[u8]) -> Sse {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"), "stream must end with a blank line");
    let mut events = Vec::new();
    let mut done = false;
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let data = block
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("bad event {block:?}"));
        assert!(!done, "event after [DONE]");
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(data).unwrap());
        }
    }
    Sse { events, done }
}

pub fn stats(addr: SocketAddr) -> Value {
    get(addr, "/sim/stats").json()
}
