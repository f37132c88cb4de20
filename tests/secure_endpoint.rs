//! A query node serving HTTPS with basic authentication, driven by the real
//! `pinotdb` client: TLS, credentials from `${VAR}`, 401 for a wrong
//! password, `/health` open, nothing served in clear text.

use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_testkit::net::{free_port, http_get};
use sluice_testkit::{GuardedChild, wait_until_blocking};

#[test]
fn pinotdb_over_tls_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = sluice_testkit::self_signed_certificate(dir.path()).unwrap();
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let config = dir.path().join("query.toml");
    std::fs::write(
        &config,
        format!(
            "cache_dir = \"{}\"\n[coordinator]\nconnect = \"embedded\"\n[http]\nlisten = \"{addr}\"\n\
             [http.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [http.auth]\nusers = [{{ username = \"analyst\", password = \"${{SLUICE_TEST_PASSWORD}}\" }}]\n",
            dir.path().join("cache").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let password = "correct horse battery staple";
    let log = std::fs::File::create(dir.path().join("query.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["query", "--config", config.to_str().unwrap()])
        .env("SLUICE_TEST_PASSWORD", password)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _node = GuardedChild::spawn(command).unwrap();
    let listening = || std::net::TcpStream::connect(&addr).is_ok();
    wait_until_blocking("the query node listens", Duration::from_secs(30), listening).unwrap();

    // Plain HTTP gets no answer from a TLS endpoint.
    assert_ne!(http_get(&addr, "/health").0, 200);

    let (host, port) = addr.split_once(':').unwrap();
    let client = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pinotdb_secure.py"))
        .args([host, port, "analyst", password])
        .output()
        .unwrap();
    assert!(
        client.status.success(),
        "{}\n{}\nnode:\n{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr),
        std::fs::read_to_string(dir.path().join("query.log")).unwrap_or_default()
    );
}
