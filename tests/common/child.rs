//! `timebox serve` as a child process: configs on fixed ports (a child cannot report the ports it
//! bound), for the tests that kill the binary (`audit_wire.rs`, `fleet_process.rs`).

use super::Options;

/// A port free right now on 127.0.0.1 (for a child's config; it binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// [`super::config_text`] with the proxy and admin listeners on free fixed ports (a child
/// `timebox serve` cannot report the ports it bound): (config text, proxy port, admin port).
pub fn config_on_fixed_ports(opts: &Options, dir: &std::path::Path, cluster_port: u16) -> (String, u16, u16) {
    let (proxy_port, admin_port) = (free_port(), free_port());
    let text = super::config_text(opts, dir, cluster_port)
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{proxy_port}\""),
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{admin_port}\""),
            1,
        );
    (text, proxy_port, admin_port)
}
