//! `timebox demo` end to end, as a newcomer runs it: the real binary, the real `psql` with the exact
//! command line the demo prints, then Ctrl-C (SIGINT) and a check that nothing is left behind — no
//! demo directory, no upstream data directory, no postmaster, nothing listening on the ports.
//!
//! Guards against: the README's first command printing a psql line that does not work; a demo that
//! leaves a PostgreSQL running or secrets on disk after Ctrl-C.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Cluster start, initdb and the sample data take a few seconds; a cold release build is not part of
/// this (the binary is already built).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Two distinct free loopback ports (both held while probing, so they differ).
fn two_free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// The demo process; on drop (a failed assertion) it is interrupted, then killed, so it never
/// outlives the test. Its cluster is guarded by its pid either way.
struct DemoProcess {
    child: Child,
    /// stdout lines, as the demo prints them.
    lines: mpsc::Receiver<String>,
    /// Everything read from stdout so far (for failure messages).
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl DemoProcess {
    fn spawn(port: u16, admin_port: u16, dir: &Path) -> DemoProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_timebox"))
            .arg("demo")
            .args(["--port", &port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn `timebox demo`");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        DemoProcess {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Reads stdout until a line satisfies `pred`; panics (with the output so far) on timeout or exit.
    fn wait_for_line(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {what} within {timeout:?}; stdout so far:\n{}",
                        self.seen.join("\n")
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
                    panic!(
                        "`timebox demo` exited ({status:?}) before printing {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        self.seen.join("\n"),
                        stderr.unwrap_or_default()
                    )
                }
            }
        }
    }

    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT failed: {status}");
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The rest of stdout after the process exited.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.interrupt();
            if self.wait_timeout(STOP_TIMEOUT).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Pids of processes whose command line mentions `needle` (the postmaster's `-D <data dir>`).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

fn accepts_connections(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1)).is_ok()
}

#[test]
fn demo_prints_a_working_psql_command_and_cleans_up_on_ctrl_c() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("demo");
    let (port, admin_port) = two_free_ports();
    let mut demo = DemoProcess::spawn(port, admin_port, &dir);

    let upstream_port_line = demo.wait_for_line("the upstream PostgreSQL line", STARTUP_TIMEOUT, |l| {
        l.contains("(throwaway) 127.0.0.1:")
    });
    let upstream_port: u16 = upstream_port_line
        .split("(throwaway) 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no upstream port in {upstream_port_line:?}"));
    let data_dir_line = demo.wait_for_line("the upstream data directory", STARTUP_TIMEOUT, |l| {
        l.trim_start().starts_with("upstream data directory")
    });
    let data_dir = PathBuf::from(
        data_dir_line
            .trim_start()
            .trim_start_matches("upstream data directory")
            .trim(),
    );
    assert!(
        data_dir.is_dir(),
        "upstream data directory {} exists while running",
        data_dir.display()
    );

    let alice = demo.wait_for_line("alice's psql command", STARTUP_TIMEOUT, |l| {
        l.trim_start().starts_with("PGPASSWORD=") && l.contains("user=alice")
    });
    let alice = alice.trim().to_owned();
    assert!(alice.contains(&format!("port={port} ")), "{alice}");
    assert!(alice.contains("sslmode=require"), "{alice}");
    demo.wait_for_line("the Ctrl-C hint", STARTUP_TIMEOUT, |l| {
        l.contains("Press Ctrl-C to stop")
    });

    let config = dir.join("timebox.toml");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&config).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the demo config holds upstream passwords");
    let admin_token = demo
        .seen
        .iter()
        .find_map(|l| l.split("TIMEBOX_ADMIN_TOKEN=").nth(1))
        .map(|t| t.trim().to_owned())
        .expect("the admin token is printed");
    assert!(
        !std::fs::read_to_string(&config).unwrap().contains(&admin_token),
        "only the admin token's SHA-256 is in the config"
    );

    // The exact command a newcomer pastes, plus a query.
    let psql = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{alice} -X -A -t -v ON_ERROR_STOP=1 -c 'SELECT count(*) FROM customers'"
        ))
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    let psql_stdout = String::from_utf8_lossy(&psql.stdout).trim().to_owned();
    let psql_stderr = String::from_utf8_lossy(&psql.stderr).trim().to_owned();

    // Ctrl-C, and check the cleanup before judging psql, so a failure reports both.
    demo.interrupt();
    let status = demo.wait_timeout(STOP_TIMEOUT);
    demo.drain();
    let stderr = demo
        .stderr
        .take()
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    let output = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        demo.seen.join("\n")
    );

    let mut failures = Vec::new();
    if !psql.status.success() || psql_stdout != timebox::demo::CUSTOMERS.len().to_string() {
        failures.push(format!(
            "psql through the proxy: {} (expected count {}), stdout {psql_stdout:?}, stderr {psql_stderr:?}",
            psql.status,
            timebox::demo::CUSTOMERS.len()
        ));
    }
    match status {
        Some(s) if s.success() => {}
        Some(s) => failures.push(format!("demo exited with {s} after SIGINT")),
        None => failures.push(format!("demo still running {STOP_TIMEOUT:?} after SIGINT")),
    }
    if !demo.seen.iter().any(|l| l.contains("stopped, cleaned up")) {
        failures.push("no \"stopped, cleaned up\" line".into());
    }
    if dir.exists() {
        failures.push(format!("demo directory {} still exists", dir.display()));
    }
    if data_dir.exists() {
        failures.push(format!(
            "upstream data directory {} still exists",
            data_dir.display()
        ));
    }
    let leftovers = processes_mentioning(&data_dir.to_string_lossy());
    if !leftovers.is_empty() {
        failures.push(format!("processes of the upstream cluster remain: {leftovers:?}"));
    }
    for (what, p) in [
        ("upstream PostgreSQL", upstream_port),
        ("proxy", port),
        ("admin API", admin_port),
    ] {
        if accepts_connections(p) {
            failures.push(format!("something still listens on the {what} port {p}"));
        }
    }
    assert!(failures.is_empty(), "{}\n{output}", failures.join("\n"));
}
