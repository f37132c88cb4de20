use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Reserves `n` distinct free loopback ports. They are released before
/// returning, so a server must bind them soon; starters retry with new ports
/// when a bind races with another process.
pub fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect()
}

pub fn free_port() -> io::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// Sends a ZooKeeper four-letter command and returns the answer.
pub fn four_letter(port: u16, command: &str) -> io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(command.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// A plain HTTP/1.1 GET on loopback: `(status, body)`, or `(0, "")` when
/// nothing listens there (yet).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, b"")
}

/// A plain HTTP/1.1 POST of a JSON body on loopback, as [`http_get`].
pub fn http_post(addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    http_request(addr, "POST", path, body)
}

/// A plain HTTP/1.1 request on loopback, as [`http_get`].
pub fn http_request(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    http_request_with(addr, method, path, body, "")
}

/// [`http_request`] with `headers`: further header lines, each ending in CRLF.
pub fn http_request_with(addr: &str, method: &str, path: &str, body: &[u8], headers: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else { return (0, String::new()) };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).is_err() {
        return (0, String::new());
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The sum of every sample of Prometheus metric `name` (all label sets) in
/// a `/metrics` text.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
