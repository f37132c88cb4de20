//! An S3-compatible server for tests: moto's server (PyPI `moto[server]`,
//! the kind of server object_store's own CI runs against), in a process of
//! its own on a free loopback port.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::{free_port, http_request};
use crate::process::GuardedChild;

/// The credentials the server accepts (moto accepts any).
pub const ACCESS_KEY: &str = "sluice-test";
pub const SECRET_KEY: &str = "sluice-test-secret";
pub const REGION: &str = "us-east-1";

/// A moto S3 server. Killed when dropped.
pub struct S3Server {
    port: u16,
    _process: GuardedChild,
}

impl S3Server {
    pub fn start() -> anyhow::Result<Self> {
        check_installed()?;
        let port = free_port()?;
        let mut command = Command::new("python3");
        command
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = GuardedChild::spawn(command)?;
        let server = S3Server { port, _process: process };
        let started = Instant::now();
        while http_request(&server.addr(), "GET", "/", b"").0 == 0 {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "moto's S3 server did not start on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The endpoint URL clients use (plain HTTP).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Creates `bucket` (moto takes unsigned requests).
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let (status, body) = http_request(&self.addr(), "PUT", &format!("/{bucket}"), b"");
        anyhow::ensure!(status == 200, "creating bucket {bucket}: HTTP {status}: {body}");
        Ok(())
    }

    /// The environment an S3 client of this server needs.
    pub fn env(&self) -> [(&'static str, String); 3] {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
        ]
    }
}

fn check_installed() -> anyhow::Result<()> {
    let ok = Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    anyhow::ensure!(
        ok,
        "moto's S3 server is not installed: `python3 -m pip install 'moto[server]'` (scripts/test does)"
    );
    Ok(())
}
