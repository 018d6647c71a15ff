//! A minimal HTTP/1.0 GET for readiness probes and lab checks: plain HTTP, one request per
//! connection, bounded by a timeout. Enough for probing the labs' apps without a client stack.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::spec::CheckSpec;
use crate::step::CheckResult;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// GET `url` (`http://host:port/path`). Errors are one-line reasons for a person.
pub async fn get(url: &str, timeout: Duration) -> Result<Response, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("only http:// URLs can be probed, got `{url}`"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let exchange = async {
        let stream = TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        exchange(stream, authority, path).await
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("no answer from {addr} within {timeout:?}"))?
}

/// One GET over an already-open stream (a TCP connection, a Kubernetes port-forward).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
) -> Result<Response, String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: labctl\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    // Read until the body is complete by its Content-Length, else until the peer closes: some
    // relays (the socat behind a dockershim port-forward) hold the close back for half a second.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if complete(&raw) {
            break;
        }
    }
    parse(&raw)
}

/// Whether `raw` holds the whole response: headers, and as many body bytes as Content-Length says.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..end]);
    let length = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok()).flatten()
    });
    length.is_some_and(|length| raw.len() >= end + 4 + length)
}

fn parse(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("the connection closed before a full HTTP response")?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", head.lines().next().unwrap_or_default()))?;
    Ok(Response { status, body: body.to_string() })
}

/// Runs one lab check against an already-rendered URL.
pub async fn run_check(check: &CheckSpec, url: &str) -> CheckResult {
    let http = &check.http;
    let name = check.name.clone().unwrap_or_else(|| format!("GET {url}"));
    let response = match get(url, Duration::from_secs(10)).await {
        Ok(r) => r,
        Err(e) => {
            return CheckResult { name, ok: false, detail: e };
        }
    };
    let mut problems = Vec::new();
    if response.status != http.status {
        problems.push(format!("status {} (expected {})", response.status, http.status));
    }
    if let Some(want) = &http.body_contains
        && !response.body.contains(want.as_str())
    {
        problems.push(format!("body does not contain {want:?}"));
    }
    if let Some(banned) = &http.body_not_contains
        && response.body.contains(banned.as_str())
    {
        problems.push(format!("body contains {banned:?}"));
    }
    if let Some(want) = &http.body_equals
        && response.body.trim_end() != want.as_str()
    {
        problems.push(format!("body is {:?} (expected {want:?})", clip(&response.body)));
    }
    if problems.is_empty() {
        CheckResult { name, ok: true, detail: format!("{} {}", response.status, clip(&response.body)) }
    } else {
        CheckResult { name, ok: false, detail: format!("{}; got: {}", problems.join(", "), clip(&response.body)) }
    }
}

fn clip(s: &str) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 80 {
        format!("{}…", one_line.chars().take(80).collect::<String>())
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nInvalid numbers").unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body, "Invalid numbers");
        assert!(parse(b"garbage").is_err());
    }

    #[tokio::test]
    async fn get_talks_to_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /x HTTP/1.0"));
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\nHello, World!").await.unwrap();
        });
        let r = get(&format!("http://{addr}/x"), Duration::from_secs(5)).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "Hello, World!"));
    }

    #[tokio::test]
    async fn a_response_is_done_at_its_content_length_even_if_the_peer_keeps_the_connection() {
        let (client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await.unwrap();
            server.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, ").await.unwrap();
            server.write_all(b"World!").await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await; // never closes in time
            drop(server);
        });
        let r =
            tokio::time::timeout(Duration::from_secs(2), exchange(client, "x", "/")).await.expect("no wait for EOF");
        assert_eq!((r.unwrap().body.as_str(), complete(b"HTTP/1.0 200 OK\r\n\r\n")), ("Hello, World!", false));
    }
}
