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
