//! Real ZooKeeper servers (Debian's `zookeeper` package) on loopback.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::net::{four_letter, free_ports};
use crate::process::GuardedChild;

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";
/// Netty's codec, resolver and native-unix jars, which the server's TLS
/// port needs beyond the Netty jars `zookeeper.jar`'s manifest lists.
const NETTY_JARS: &str = "/usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar:/usr/share/java/netty-transport-native-unix-common.jar";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// ZooKeeper's tick. Session timeouts are bounded by 2..20 ticks by default;
/// the explicit min/max below let tests use sessions from 1 s to 60 s.
const TICK_MS: u64 = 500;

/// One ZooKeeper server process with its own config and data directory.
struct Node {
    id: usize,
    client_port: u16,
    /// The TLS port (`secureClientPort`) and its PEM files, when served.
    tls: Option<SecurePort>,
    dir: PathBuf,
    process: Option<GuardedChild>,
}

#[derive(Clone)]
struct SecurePort {
    port: u16,
    /// Key and certificate in one PEM file (ZooKeeper's PEM key store).
    key_store: PathBuf,
    certificate: PathBuf,
}

impl Node {
    fn config_path(&self) -> PathBuf {
        self.dir.join("zoo.cfg")
    }
    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn write_config(&self, peers: &[(u16, u16)]) -> anyhow::Result<()> {
        let data_dir = self.dir.join("data");
        fs::create_dir_all(&data_dir)?;
        let mut cfg = format!(
            "tickTime={TICK_MS}\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n4lw.commands.whitelist=*\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n\
             maxClientCnxns=0\n",
            data_dir.display(),
            self.client_port
        );
        if let Some(tls) = &self.tls {
            // Netty serves both ports; the plain one stays for the
            // four-letter readiness checks.
            write!(
                cfg,
                "secureClientPort={}\nsecureClientPortAddress=127.0.0.1\n\
                 serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
                 ssl.keyStore.location={}\nssl.keyStore.type=PEM\n\
                 ssl.trustStore.location={}\nssl.trustStore.type=PEM\nssl.clientAuth=none\n",
                tls.port,
                tls.key_store.display(),
                tls.certificate.display()
            )?;
        }
        if !peers.is_empty() {
            for (i, (quorum, election)) in peers.iter().enumerate() {
                writeln!(cfg, "server.{}=127.0.0.1:{quorum}:{election}", i + 1)?;
            }
            fs::write(data_dir.join("myid"), format!("{}\n", self.id))?;
        }
        fs::write(self.config_path(), cfg)?;
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let mut command = Command::new("java");
        command
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("-Dzookeeper.jmx.log4j.disable=true")
            .arg("-cp")
            .arg(format!("{ZOOKEEPER_JAR}:{SLF4J_SIMPLE_JAR}:{NETTY_JARS}"))
            .arg(if self.is_ensemble_member() {
                "org.apache.zookeeper.server.quorum.QuorumPeerMain"
            } else {
                "org.apache.zookeeper.server.ZooKeeperServerMain"
            })
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.process = Some(GuardedChild::spawn(command).context("start java (is a JRE installed?)")?);
        Ok(())
    }

    fn is_ensemble_member(&self) -> bool {
        self.dir.join("data/myid").exists()
    }

    /// The server's mode (`standalone`, `leader`, `follower`) once it serves.
    fn mode(&self) -> Option<String> {
        let answer = four_letter(self.client_port, "srvr").ok()?;
        answer.lines().find_map(|l| l.strip_prefix("Mode: ")).map(|m| m.trim().to_string())
    }

    fn exited(&mut self) -> bool {
        match self.process.as_mut() {
            Some(p) => matches!(p.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

fn check_installed() -> anyhow::Result<()> {
    if !Path::new(ZOOKEEPER_JAR).exists() {
        bail!("{ZOOKEEPER_JAR} not found: install Debian's `zookeeper` package (scripts/test does)");
    }
    Ok(())
}

/// Waits until every node serves in one of `modes`.
fn wait_ready(nodes: &mut [Node], modes: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut all_ready = true;
        for node in nodes.iter_mut() {
            if node.process.is_none() {
                continue;
            }
            if node.exited() {
                bail!(
                    "ZooKeeper server {} on port {} exited while starting:\n{}",
                    node.id,
                    node.client_port,
                    node.log_tail()
                );
            }
            if !node.mode().is_some_and(|m| modes.contains(&m.as_str())) {
                all_ready = false;
            }
        }
        if all_ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let tails: Vec<String> = nodes.iter().map(|n| format!("server {}:\n{}", n.id, n.log_tail())).collect();
            bail!("ZooKeeper did not become ready within {START_TIMEOUT:?}:\n{}", tails.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A standalone ZooKeeper server on a free loopback port with a temporary data
/// directory. Killed when dropped.
pub struct ZooKeeper {
    node: Node,
    _dir: TempDir,
}

impl ZooKeeper {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// A server that also serves TLS on [`ZooKeeper::secure_connect_string`],
    /// with a self-signed certificate for `127.0.0.1` ([`ZooKeeper::ca`]).
    pub fn start_tls() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> anyhow::Result<Self> {
        check_installed()?;
        let mut last_error = None;
        // A free port can be taken by another process before the JVM binds it.
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("sluice-zk-").tempdir()?;
            let ports = free_ports(2)?;
            let secure = if tls {
                let (certificate, key) = crate::self_signed_certificate(dir.path())?;
                let key_store = dir.path().join("keystore.pem");
                fs::write(&key_store, [fs::read(&key)?, fs::read(&certificate)?].concat())?;
                Some(SecurePort { port: ports[1], key_store, certificate })
            } else {
                None
            };
            let mut node =
                Node { id: 1, client_port: ports[0], tls: secure, dir: dir.path().to_path_buf(), process: None };
            node.write_config(&[])?;
            node.spawn()?;
            match wait_ready(std::slice::from_mut(&mut node), &["standalone"]) {
                Ok(()) => return Ok(Self { node, _dir: dir }),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// `127.0.0.1:<port>`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.node.client_port)
    }

    /// `127.0.0.1:<TLS port>`, for a server started with [`ZooKeeper::start_tls`].
    pub fn secure_connect_string(&self) -> Option<String> {
        self.node.tls.as_ref().map(|t| format!("127.0.0.1:{}", t.port))
    }

    /// The certificate a client must trust to reach the TLS port.
    pub fn ca(&self) -> Option<&Path> {
        self.node.tls.as_ref().map(|t| t.certificate.as_path())
    }

    pub fn port(&self) -> u16 {
        self.node.client_port
    }

    pub fn pid(&self) -> Option<u32> {
        self.node.process.as_ref().and_then(GuardedChild::id)
    }

    /// Kills the server (SIGKILL: a crash, not a clean shutdown).
    pub fn stop(&mut self) {
        self.node.stop();
    }

    /// Starts the server again on the same port with the same data, after
    /// [`ZooKeeper::stop`]. Sessions survive if it comes back within their timeout.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.node.stop();
        self.node.spawn()?;
        wait_ready(std::slice::from_mut(&mut self.node), &["standalone"])
    }

    /// Sends a four-letter command (`srvr`, `cons`, `dump`, ...).
    pub fn four_letter(&self, command: &str) -> std::io::Result<String> {
        four_letter(self.node.client_port, command)
    }
}

/// A ZooKeeper ensemble of loopback servers (usually 3), for failover tests.
pub struct ZooKeeperEnsemble {
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl ZooKeeperEnsemble {
    pub fn start(size: usize) -> anyhow::Result<Self> {
        check_installed()?;
        anyhow::ensure!(size >= 3 && size % 2 == 1, "an ensemble needs an odd number of servers, at least 3");
        let mut last_error = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("sluice-zk-ensemble-").tempdir()?;
            let ports = free_ports(size * 3)?;
            let peers: Vec<(u16, u16)> = (0..size).map(|i| (ports[size + 2 * i], ports[size + 2 * i + 1])).collect();
            let mut nodes = Vec::with_capacity(size);
            for (i, client_port) in ports.iter().take(size).enumerate() {
                let node = Node {
                    id: i + 1,
                    client_port: *client_port,
                    tls: None,
                    dir: dir.path().join(format!("zk{}", i + 1)),
                    process: None,
                };
                fs::create_dir_all(&node.dir)?;
                node.write_config(&peers)?;
                nodes.push(node);
            }
            for node in &mut nodes {
                node.spawn()?;
            }
            match wait_ready(&mut nodes, &["leader", "follower"]) {
                Ok(()) => return Ok(Self { nodes, _dir: dir }),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// All servers, comma-separated, as a client connect string.
    pub fn connect_string(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.client_port)).collect::<Vec<_>>().join(",")
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Index of the current leader, if one serves.
    pub fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.process.is_some() && n.mode().as_deref() == Some("leader"))
    }

    /// Kills server `index` (0-based).
    pub fn stop_node(&mut self, index: usize) {
        self.nodes[index].stop();
    }

    /// Starts server `index` again and waits until it has rejoined.
    pub fn start_node(&mut self, index: usize) -> anyhow::Result<()> {
        self.nodes[index].stop();
        self.nodes[index].spawn()?;
        wait_ready(std::slice::from_mut(&mut self.nodes[index]), &["leader", "follower"])
    }

    /// Waits until the running servers have a leader again (after a stop).
    pub fn wait_for_quorum(&mut self) -> anyhow::Result<()> {
        wait_ready(&mut self.nodes, &["leader", "follower"])
    }
}
