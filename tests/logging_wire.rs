//! The real `timebox serve` binary's log (stderr) against hostile client text: a client cannot
//! write a line of its own into it (issue 16, finding 9a).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The serve process, killed when dropped; its output lines (stderr and stdout) arrive on `lines`.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Serve {
    fn start(config: &std::path::Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_timebox"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start timebox serve");
        let (tx, lines) = mpsc::channel();
        // The log goes to stderr; stdout is read too so that nothing logged anywhere escapes the check.
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for output in [stdout, stderr] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Serve {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (generously) for a line matching `pred`; panics with everything seen if none comes.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what} line; log so far:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Regression (issue 16, finding 9a): the startup user name was logged raw, so `evil\nFORGED …`
/// wrote a forged standalone line. Now it is escaped in place and every event stays one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_the_startup_user_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("timebox.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
tls = "disabled"

[admin]
listen = "127.0.0.1:0"

[store]
url = "sqlite://{dir}/timebox.db"

[targets.shop]
host = "127.0.0.1"
port = 1
database = "shop"
[targets.shop.credentials.read]
user = "nobody"
password = "unused"

[roles.read]
allow = ["read"]
max_ttl = "1h"
"#,
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let mut serve = Serve::start(&config);
    let listening = serve.wait_for("'timebox listening'", |l| l.contains("timebox listening"));
    let proxy = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("proxy="))
        .unwrap_or_else(|| panic!("no proxy address in {listening:?}"))
        .to_owned();
    let port = proxy.rsplit(':').next().unwrap().to_owned();

    let user = "evil\nFORGED ERROR timebox: audit log deleted\r\n\x1b[1Gspoofed";
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port.parse().unwrap())
        .user(user)
        .password("tbx_not_a_token")
        .dbname("shop")
        .connect_timeout(Duration::from_secs(30));
    let refused = config.connect(tokio_postgres::NoTls).await;
    let error = refused.err().expect("a wrong token is refused");
    assert_eq!(
        error.as_db_error().map(|e| e.code().code()),
        Some("28P01"),
        "{error:?}"
    );

    let failed = serve.wait_for("'authentication failed'", |l| l.contains("authentication failed"));
    assert!(
        failed.contains("evil\\nFORGED"),
        "the user is logged, escaped: {failed}"
    );
    for line in &serve.seen {
        assert!(
            !line.starts_with("FORGED") && !line.starts_with("spoofed"),
            "forged log line {line:?} in:\n{}",
            serve.seen.join("\n")
        );
        assert!(
            !line.contains('\x1b') && !line.contains('\r'),
            "raw control in {line:?}"
        );
    }
}
