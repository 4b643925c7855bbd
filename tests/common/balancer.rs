//! A TCP round-robin balancer in front of several timebox instances, as a team would run any TCP
//! load balancer: each new connection goes to the next backend in turn, bytes are copied both
//! ways. It records where each connection went, so a test can say which instance a login and
//! its cancel request landed on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    /// Index into the backends of each accepted connection, in order.
    routed: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Listens on 127.0.0.1:0 and alternates connections over `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind balancer");
        let addr = listener.local_addr().unwrap();
        let routed = Arc::new(Mutex::new(Vec::new()));
        let log = routed.clone();
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((mut client, _)) = listener.accept().await {
                let i = next % backends.len();
                next += 1;
                log.lock().unwrap().push(i);
                let backend = backends[i];
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Balancer { addr, routed, task }
    }

    /// Where the connections accepted so far went.
    pub fn routed(&self) -> Vec<usize> {
        self.routed.lock().unwrap().clone()
    }

    /// A libpq connection string through the balancer (no password).
    pub fn conn(&self, user: &str, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=shop {extra}",
            self.addr.port()
        )
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
