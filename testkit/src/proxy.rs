//! A loopback TCP proxy that injects network faults between a client and a
//! real server: a partition (`blackhole`) and an ambiguous request
//! (`lose_next_response`: the request reaches the server, its answer never
//! reaches the client, the connection breaks).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    blackhole: AtomicBool,
    lose_responses: AtomicBool,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accept_state.blackhole.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let conn_state = accept_state.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        pipe(client, server, conn_state).await;
                    }
                });
                accept_state.connections.lock().expect("proxy state").push(handle);
            }
        });
        Ok(Self { addr, state, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A network partition: open connections are cut and new ones refused
    /// until [`TcpProxy::restore`].
    pub fn blackhole(&self) {
        self.state.blackhole.store(true, Ordering::SeqCst);
        self.cut_all();
    }

    pub fn restore(&self) {
        self.state.blackhole.store(false, Ordering::SeqCst);
        self.state.lose_responses.store(false, Ordering::SeqCst);
    }

    /// From now on requests still reach the server but no answer reaches the
    /// client; after `window` every connection is cut. Whatever the client
    /// sent in the window was applied, and the client cannot know it.
    pub fn lose_responses_for(&self, window: Duration) {
        self.state.lose_responses.store(true, Ordering::SeqCst);
        let state = self.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            for handle in state.connections.lock().expect("proxy state").drain(..) {
                handle.abort();
            }
            state.lose_responses.store(false, Ordering::SeqCst);
        });
    }

    fn cut_all(&self) {
        for handle in self.state.connections.lock().expect("proxy state").drain(..) {
            handle.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, state: Arc<State>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if state.lose_responses.load(Ordering::SeqCst) {
                continue;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}
