//! A small, defensive HTTP/1.1 server-side implementation over `TcpStream`.
//!
//! Handles keep-alive and pipelining, `Content-Length` and chunked request
//! bodies, `Expect: 100-continue`, and caps head (64 KiB → 431) and body
//! (64 MiB → 413) sizes. Nothing here panics on network input: every
//! malformed request becomes a [`ReadError`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

pub const MAX_HEAD_BYTES: usize = 64 * 1024;
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Once a request has started arriving, the rest must arrive within this.
/// Idle keep-alive connections have no timeout (connection pools such as
/// Envoy's would otherwise race against our close).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CHUNK_LINE: usize = 4096;
const READ_SIZE: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Request target without the query string.
    pub path: String,
    /// Lower-cased names, values trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may be reused after this request.
    pub keep_alive: bool,
}

impl Request {
    /// First header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// The peer closed (or timed out) between requests or mid-request; there
    /// is nobody to answer.
    Closed,
    /// The request is malformed: answer with this status and close.
    Bad(u16, String),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Closed
    }
}

fn bad(status: u16, message: impl Into<String>) -> ReadError {
    ReadError::Bad(status, message.into())
}

/// One client connection with its read buffer (which may hold the start of
/// a pipelined next request).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn buffered(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    /// Reads more bytes into the buffer; `Ok(0)` on EOF.
    fn fill(&mut self, want: usize) -> io::Result<usize> {
        let old = self.buf.len();
        self.buf.resize(old + want.clamp(READ_SIZE, 1 << 20), 0);
        let result = loop {
            let dst = self.buf.get_mut(old..).unwrap_or(&mut []);
            match self.stream.read(dst) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        result
    }

    /// Makes sure at least `n` bytes are buffered.
    fn ensure(&mut self, n: usize) -> Result<(), ReadError> {
        while self.buffered().len() < n {
            let missing = n - self.buffered().len();
            if self.fill(missing)? == 0 {
                return Err(ReadError::Closed);
            }
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let out = self.buffered().get(..n).unwrap_or(&[]).to_vec();
        self.pos += out.len();
        out
    }

    /// Reads one line (up to `\n`, with an optional `\r` before it) of at
    /// most `max` bytes, returned without its terminator.
    fn read_line(&mut self, max: usize, too_long: u16) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(i) = self.buffered().iter().position(|&b| b == b'\n') {
                if i > max {
                    return Err(bad(too_long, "line too long"));
                }
                let mut line = self.take(i + 1);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buffered().len() > max {
                return Err(bad(too_long, "line too long"));
            }
            if self.fill(READ_SIZE)? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos.min(self.buf.len()));
            self.pos = 0;
        }
        if self.buf.capacity() > 4 * READ_SIZE && self.buf.len() < READ_SIZE {
            self.buf.shrink_to(READ_SIZE);
        }
    }

    /// Reads the next request. `Err(Closed)` when the peer went away.
    pub fn read_request(&mut self) -> Result<Request, ReadError> {
        self.compact();
        self.stream.set_read_timeout(None)?;
        // Ignore empty lines before a request line (RFC 9112 §2.2).
        loop {
            match self.buffered().first() {
                Some(b'\r') | Some(b'\n') => self.pos += 1,
                Some(_) => break,
                None => {
                    if self.fill(READ_SIZE)? == 0 {
                        return Err(ReadError::Closed);
                    }
                }
            }
        }
        self.stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        let mut line_checked = false;
        let head_len = loop {
            if let Some(end) = find_head_end(self.buffered()) {
                break end;
            }
            // Reject junk as soon as its first line is complete rather than
            // waiting for a head that will never come.
            if !line_checked {
                if let Some(nl) = self.buffered().iter().position(|&b| b == b'\n') {
                    parse_request_line(self.buffered().get(..nl).unwrap_or(&[]))?;
                    line_checked = true;
                }
            }
            if self.buffered().len() > MAX_HEAD_BYTES {
                return Err(bad(431, "request header fields too large"));
            }
            if self.fill(READ_SIZE)? == 0 {
                return Err(ReadError::Closed);
            }
        };
        if head_len > MAX_HEAD_BYTES {
            return Err(bad(431, "request header fields too large"));
        }
        let head = self.take(head_len);
        let mut req = parse_head(&head)?;
        req.body = self.read_body(&req)?;
        Ok(req)
    }

    fn read_body(&mut self, req: &Request) -> Result<Vec<u8>, ReadError> {
        let te: Vec<String> = header_tokens(&req.headers, "transfer-encoding");
        let has_cl = req.headers.iter().any(|(n, _)| n == "content-length");
        if !te.is_empty() {
            if has_cl {
                return Err(bad(400, "both Transfer-Encoding and Content-Length"));
            }
            if te.iter().any(|t| t != "chunked") || te.len() != 1 {
                return Err(bad(501, "only the chunked transfer-coding is supported"));
            }
            self.maybe_continue(req)?;
            return self.read_chunked();
        }
        let len = content_length(&req.headers)?;
        if len > MAX_BODY_BYTES {
            return Err(bad(413, "request body too large"));
        }
        if len > 0 {
            if self.buffered().len() < len {
                self.maybe_continue(req)?;
            }
            self.ensure(len)?;
        }
        Ok(self.take(len))
    }

    fn maybe_continue(&mut self, req: &Request) -> Result<(), ReadError> {
        if req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        Ok(())
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(MAX_CHUNK_LINE, 400)?;
            let line = String::from_utf8_lossy(&line);
            let size_str = line.split(';').next().unwrap_or("").trim();
            if size_str.is_empty() || !size_str.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(400, "bad chunk size"));
            }
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| bad(413, "request body too large"))?;
            if size == 0 {
                // Trailer section, ended by an empty line; trailers are ignored.
                let mut trailer_bytes = 0;
                loop {
                    let t = self.read_line(MAX_HEAD_BYTES, 431)?;
                    if t.is_empty() {
                        return Ok(body);
                    }
                    trailer_bytes += t.len();
                    if trailer_bytes > MAX_HEAD_BYTES {
                        return Err(bad(431, "trailers too large"));
                    }
                }
            }
            if body.len().saturating_add(size) > MAX_BODY_BYTES {
                return Err(bad(413, "request body too large"));
            }
            self.ensure(size)?;
            body.extend_from_slice(&self.take(size));
            if !self.read_line(2, 400)?.is_empty() {
                return Err(bad(400, "chunk data not followed by CRLF"));
            }
        }
    }
}

/// Length of the head including its terminating empty line, if complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return Some(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `METHOD SP target SP HTTP/1.x` → (method, target, is HTTP/1.0).
fn parse_request_line(line: &[u8]) -> Result<(String, String, bool), ReadError> {
    let line = std::str::from_utf8(line).map_err(|_| bad(400, "malformed request line"))?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if is_token(m) && !t.is_empty() => (m, t, v),
        _ => return Err(bad(400, "malformed request line")),
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(bad(400, "unsupported HTTP version")),
    };
    Ok((method.to_string(), target.to_string(), http10))
}

fn parse_head(head: &[u8]) -> Result<Request, ReadError> {
    let first_len = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let (method, target, http10) = parse_request_line(head.get(..first_len).unwrap_or(&[]))?;
    let text = String::from_utf8_lossy(head.get(first_len + 1..).unwrap_or(&[]));
    let lines = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l));
    let target = target.as_str();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            return Err(bad(400, "obsolete header line folding"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(400, "malformed header line"))?;
        if !is_token(name) {
            return Err(bad(400, "malformed header name"));
        }
        headers.push((
            name.to_ascii_lowercase(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    // Origin form (`/path?q`) or absolute form (`http://host/path?q`).
    let path_and_query = if target.starts_with('/') {
        target
    } else if let Some(rest) = target.split_once("://").map(|(_, r)| r) {
        rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/")
    } else if target == "*" {
        "*"
    } else {
        return Err(bad(400, "malformed request target"));
    };
    let path = path_and_query
        .split(['?', '#'])
        .next()
        .unwrap_or("/")
        .to_string();
    let conn_tokens = header_tokens(&headers, "connection");
    let keep_alive = if http10 {
        conn_tokens.iter().any(|t| t == "keep-alive")
    } else {
        !conn_tokens.iter().any(|t| t == "close")
    };
    Ok(Request {
        method,
        path,
        headers,
        body: Vec::new(),
        keep_alive,
    })
}

/// Comma-separated, lower-cased tokens of every header with this name.
fn header_tokens(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn content_length(headers: &[(String, String)]) -> Result<usize, ReadError> {
    let mut len: Option<usize> = None;
    for (_, v) in headers.iter().filter(|(n, _)| n == "content-length") {
        for item in v.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(400, "malformed Content-Length"));
            }
            // Too many digits to fit is certainly too large.
            let n = item.parse::<usize>().unwrap_or(usize::MAX);
            if len.is_some_and(|l| l != n) {
                return Err(bad(400, "conflicting Content-Length values"));
            }
            len = Some(n);
        }
    }
    Ok(len.unwrap_or(0))
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Serialises a response head. `content_length: None` means chunked.
pub fn head(
    status: u16,
    content_type: &str,
    content_length: Option<usize>,
    extra: &[(&str, &str)],
    close: bool,
) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n",
        reason(status)
    );
    match content_length {
        Some(n) => h.push_str(&format!("content-length: {n}\r\n")),
        None => h.push_str("transfer-encoding: chunked\r\n"),
    }
    for (name, value) in extra {
        h.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        h.push_str("connection: close\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Writes a complete response with a `content-length`.
pub fn write_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut out = head(status, content_type, Some(body.len()), extra, close);
    if body.len() <= 256 * 1024 {
        out.extend_from_slice(body);
        stream.write_all(&out)
    } else {
        stream.write_all(&out)?;
        stream.write_all(body)
    }
}

/// Appends `data` as one HTTP chunk (nothing for empty data, which would be
/// the terminating chunk).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Sleeps for `dur` unless the peer closes the connection first. Returns
/// whether the peer is (as far as we can tell) still connected.
pub fn wait_while_connected(stream: &TcpStream, dur: Duration) -> bool {
    let deadline = Instant::now() + dur;
    let connected = loop {
        let now = Instant::now();
        if now >= deadline {
            break true;
        }
        let left = (deadline - now).max(Duration::from_millis(1));
        if stream.set_read_timeout(Some(left)).is_err() {
            std::thread::sleep(left);
            break true;
        }
        let mut probe = [0u8; 1];
        match stream.peek(&mut probe) {
            Ok(0) => break false,
            Ok(_) => {
                // The client already sent more (a pipelined request); we can
                // no longer see a close with peek, so just sleep it out.
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                break true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break false,
        }
    };
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    connected
}

/// Closes after an error response: stop writing, then briefly drain what
/// the client is still sending so the kernel does not turn our close into
/// a reset that destroys the response before the client reads it.
pub fn close_gracefully(stream: &mut TcpStream) {
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < (4 << 20) {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_detection() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(find_head_end(b""), None);
    }

    #[test]
    fn parses_head() {
        let r = parse_head(
            b"POST http://x/v1/models?a=1 HTTP/1.0\r\nConnection: Keep-Alive\r\nX-A:  b \r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/models");
        assert!(r.keep_alive);
        assert_eq!(r.header("x-a"), Some("b"));
        let r = parse_head(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        for bad in [
            &b"GET /  HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: b\r\n\r\n",
            b"GET nope HTTP/1.1\r\n\r\n",
            b"\xff / HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn content_length_rules() {
        let h = |v: &str| vec![("content-length".to_string(), v.to_string())];
        assert_eq!(content_length(&h("12")).unwrap(), 12);
        assert_eq!(content_length(&h("12, 12")).unwrap(), 12);
        assert!(content_length(&h("12, 13")).is_err());
        assert!(content_length(&h("-1")).is_err());
        assert!(content_length(&h("+1")).is_err());
        assert_eq!(
            content_length(&h("99999999999999999999999")).unwrap(),
            usize::MAX
        );
        assert_eq!(content_length(&[]).unwrap(), 0);
    }
}
