//! A throwaway PostgreSQL cluster: `initdb` into a fresh temporary directory, start a postmaster on a
//! free loopback port, hand out its address and superuser credentials, stop it and delete everything
//! on drop.
//!
//! Where it sits: outside the proxy's data flow entirely. It plays the *upstream* PostgreSQL for
//! `timebox demo`, for the wire tests under `tests/` (through `tests/common/cluster.rs`) and for the
//! end-to-end benchmarks. Nothing on the serving path (`serve`) may depend on it.
//!
//! What it must never do: touch a cluster it did not create (the distribution's own cluster, its
//! `/var/run/postgresql` sockets or its config), listen on anything but `127.0.0.1`, or leave a
//! postmaster behind. The last point is why a cluster can be *guarded*: with
//! [`ClusterOptions::keep_alive_with_pid`] a detached shell polls the given process and, once it is
//! gone, stops the postmaster (`pg_ctl stop -m immediate`) and removes the directory. Test binaries keep
//! their shared cluster in a `static OnceLock`, whose `Drop` never runs, and may be killed outright; the
//! guardian covers both.
//!
//! The code is blocking `std::process` code on purpose: callers run it before their runtime work or on
//! `spawn_blocking`.
//!
//! PostgreSQL refuses to run as root. When this process is root, the server binaries (`initdb`,
//! `pg_ctl`, and through it `postgres`) run as the `postgres` system user (`runuser`, or `su` as a
//! fallback) and the temporary directory is owned by that user with mode 0700. `psql` is a plain client
//! and runs as whoever we are, over TCP.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

pub mod command;
mod process;

use process::{
    config_block, conninfo_quote, create_root_dir, find_program, free_port, has_server_binaries, hba_conf,
    is_executable, log_tail, parse_major, parse_version_output, port_conflict, random_password, read_from,
    run_checked, run_output, validate_setting_name, write_new_file, Runner,
};

/// Environment variable naming the directory that holds `initdb` and `pg_ctl`; wins over every other
/// way of finding them.
pub const PG_BIN_ENV: &str = "TIMEBOX_PG_BIN";

/// The superuser created by `initdb -U`.
pub const SUPERUSER: &str = "postgres";

/// The only address the cluster listens on.
pub const HOST: &str = "127.0.0.1";

/// How often `start` picks a new port when the chosen one was taken between probing and binding.
const START_ATTEMPTS: u32 = 5;

/// How many bytes of the server log an error carries.
const LOG_TAIL_BYTES: u64 = 4096;

/// The longest base directory we put the cluster under: the unix socket path
/// (`<dir>/.s.PGSQL.<port>`) must stay below the kernel's 107-byte limit.
const MAX_BASE_DIR_LEN: usize = 70;

/// Everything that can go wrong while finding, starting, using or stopping a throwaway cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No `initdb`/`pg_ctl` anywhere we looked.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; looked in: {searched}. \
         Install them with `apt-get install postgresql` (Debian/Ubuntu; or run scripts/install-deps.sh), \
         or set {PG_BIN_ENV} to the directory holding initdb and pg_ctl"
    )]
    NotInstalled { searched: String },

    /// `TIMEBOX_PG_BIN` is set but does not point at a usable directory.
    #[error("{PG_BIN_ENV}={dir} does not contain executable initdb and pg_ctl")]
    BadPgBin { dir: PathBuf },

    /// `pg_ctl --version` printed something we could not read a major version from.
    #[error("could not read the PostgreSQL version from `{program} --version` output {output:?}")]
    UnknownVersion { program: PathBuf, output: String },

    /// We are root and there is no `postgres` user to run the server as.
    #[error(
        "running as root, but there is no `postgres` system user to run the server as \
         (`apt-get install postgresql` creates it): {detail}"
    )]
    NoPostgresUser { detail: String },

    /// We are root and neither `runuser` nor `su` is available.
    #[error("running as root, but neither runuser nor su was found to switch to the postgres user")]
    NoUserSwitch,

    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A program could not be started at all.
    #[error("could not run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },

    /// A helper program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },

    /// `pg_ctl start` did not bring the server up.
    #[error(
        "PostgreSQL did not start on {HOST}:{port} after {attempts} attempt(s): {stderr}\n\
         --- server log tail ---\n{log_tail}"
    )]
    StartFailed {
        port: u16,
        attempts: u32,
        stderr: String,
        log_tail: String,
    },

    /// `psql` ran and reported an error (with `ON_ERROR_STOP=1`, the first failing statement).
    #[error("psql as {user} on database {database} failed ({status}): {stderr}")]
    Psql {
        user: String,
        database: String,
        status: ExitStatus,
        stderr: String,
    },

    /// A setting name that cannot be written into postgresql.conf.
    #[error("invalid postgresql.conf setting name {name:?}")]
    InvalidSetting { name: String },
}

impl ClusterError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Where the PostgreSQL server binaries live and which major version they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgInstall {
    /// Directory holding `initdb`, `pg_ctl` and `postgres` (symlinks resolved).
    pub bin_dir: PathBuf,
    /// Major version, e.g. 15.
    pub version: u32,
}

impl PgInstall {
    /// Find the server binaries: the `TIMEBOX_PG_BIN` override, then `initdb` + `pg_ctl` on `PATH`,
    /// then the highest `/usr/lib/postgresql/*/bin`.
    pub fn find() -> Result<PgInstall, ClusterError> {
        if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            if !has_server_binaries(&dir) {
                return Err(ClusterError::BadPgBin { dir });
            }
            return PgInstall::at(dir);
        }

        let mut searched = Vec::new();
        let path_dir = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path).find_map(|dir| {
                let initdb = dir.join("initdb");
                if !is_executable(&initdb) {
                    return None;
                }
                // Resolve symlinks (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb)
                // so bin_dir is the real installation, which also holds postgres, psql and pgbench.
                let real = fs::canonicalize(&initdb).ok()?;
                let real_dir = real.parent()?.to_path_buf();
                if has_server_binaries(&real_dir) {
                    Some(real_dir)
                } else if has_server_binaries(&dir) {
                    Some(dir)
                } else {
                    None
                }
            })
        });
        searched.push("$PATH".to_string());
        if let Some(dir) = path_dir {
            return PgInstall::at(dir);
        }

        searched.push("/usr/lib/postgresql/*/bin".to_string());
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let major = parse_major(&entry.file_name().to_string_lossy())?;
                let bin = entry.path().join("bin");
                has_server_binaries(&bin).then_some((major, bin))
            })
            .collect();
        versions.sort();
        match versions.pop() {
            Some((_, dir)) => PgInstall::at(dir),
            None => Err(ClusterError::NotInstalled {
                searched: searched.join(", "),
            }),
        }
    }

    /// Use the binaries in `bin_dir`, reading the version from `pg_ctl --version`.
    pub fn at(bin_dir: impl Into<PathBuf>) -> Result<PgInstall, ClusterError> {
        let bin_dir = bin_dir.into();
        let pg_ctl = bin_dir.join("pg_ctl");
        let output = run_output(Command::new(&pg_ctl).arg("--version"))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let version = parse_version_output(&text).ok_or(ClusterError::UnknownVersion {
            program: pg_ctl,
            output: text,
        })?;
        Ok(PgInstall { bin_dir, version })
    }

    /// Path of a program of this installation (`pgbench`, `psql`, …), whether or not it exists.
    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin_dir.join(program)
    }

    /// The `psql` to use: the one next to the server if present, else `/usr/bin/psql`, else `psql`
    /// from `PATH`.
    pub fn psql_path(&self) -> PathBuf {
        let own = self.bin("psql");
        if is_executable(&own) {
            return own;
        }
        let system = PathBuf::from("/usr/bin/psql");
        if is_executable(&system) {
            return system;
        }
        PathBuf::from("psql")
    }
}

/// How to start a cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    /// Password of the `postgres` superuser (SCRAM over TCP). Default: 24 random alphanumerics.
    pub superuser_password: String,
    /// pg_hba.conf lines placed before the default
    /// `host all all 127.0.0.1/32 scram-sha-256` (and `::1/128`), e.g.
    /// `host all md5_user 127.0.0.1/32 md5`.
    pub hba_prefix: Vec<String>,
    /// Extra postgresql.conf settings, written after (and so overriding) the built-in ones, e.g.
    /// `("log_statement", "all")` or `("fsync", "on")`.
    pub settings: Vec<(String, String)>,
    /// Stop and delete the cluster once this process is gone, even if `Drop` never runs (see the
    /// module docs). Usually `Some(std::process::id())`.
    pub keep_alive_with_pid: Option<u32>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            superuser_password: random_password(),
            hba_prefix: Vec::new(),
            settings: Vec::new(),
            keep_alive_with_pid: None,
        }
    }
}

impl fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("superuser_password", &"<redacted>")
            .field("hba_prefix", &self.hba_prefix)
            .field("settings", &self.settings)
            .field("keep_alive_with_pid", &self.keep_alive_with_pid)
            .finish()
    }
}

impl ClusterOptions {
    /// Add one postgresql.conf setting.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Add one pg_hba.conf line before the defaults.
    pub fn hba(mut self, line: impl Into<String>) -> Self {
        self.hba_prefix.push(line.into());
        self
    }

    /// Guard the cluster with the lifetime of process `pid`.
    pub fn keep_alive_with(mut self, pid: u32) -> Self {
        self.keep_alive_with_pid = Some(pid);
        self
    }
}

/// A running throwaway cluster. Stopped and deleted on drop.
pub struct Cluster {
    /// The binaries it runs on; `pg_ctl` for stop, `psql` for queries.
    install: PgInstall,
    /// How server binaries are run (directly, or switched to the postgres user when we are root).
    runner: Runner,
    /// The temporary directory owning everything below; removed on drop.
    root: PathBuf,
    /// `root/data`, the PGDATA.
    data_dir: PathBuf,
    /// `root/server.log`, the postmaster's stderr (`pg_ctl -l`).
    log_path: PathBuf,
    /// TCP port on 127.0.0.1.
    port: u16,
    /// Superuser password.
    password: String,
    /// Whether `stop` still has something to stop.
    running: bool,
    /// The detached guardian shell, killed on drop once the cluster is gone.
    guardian: Option<Child>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("version", &self.install.version)
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Create, configure and start a new cluster.
    pub fn start(install: &PgInstall, opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        for (name, _) in &opts.settings {
            validate_setting_name(name)?;
        }
        let runner = Runner::detect()?;
        let root = create_root_dir(&runner)?;
        let data_dir = root.join("data");
        let log_path = root.join("server.log");

        // From here on `Drop` cleans up whatever exists, including on the error paths below.
        let mut cluster = Cluster {
            install: install.clone(),
            runner,
            root,
            data_dir,
            log_path,
            port: 0,
            password: opts.superuser_password.clone(),
            running: false,
            guardian: None,
        };
        if let Some(pid) = opts.keep_alive_with_pid {
            cluster.guardian = Some(cluster.spawn_guardian(pid)?);
        }
        cluster.initdb()?;
        cluster.write_config(&opts)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `"postgres"`.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password.
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// PGDATA.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (everything the postmaster writes; with `log_statement=all`, every statement).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The installation the cluster runs on.
    pub fn install(&self) -> &PgInstall {
        &self.install
    }

    /// The directory of the unix socket (inside the cluster's temporary directory).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// A libpq key/value connection string for `user` on `database` over TCP.
    pub fn conn_string(&self, user: &str, password: Option<&str>, database: &str) -> String {
        let mut s = format!(
            "host={} port={} user={} dbname={}",
            HOST,
            self.port,
            conninfo_quote(user),
            conninfo_quote(database)
        );
        if let Some(password) = password {
            s.push_str(" password=");
            s.push_str(&conninfo_quote(password));
        }
        s
    }

    /// The superuser's connection string for `database`.
    pub fn superuser_conn_string(&self, database: &str) -> String {
        self.conn_string(SUPERUSER, Some(&self.password), database)
    }

    /// Run `sql` (one or more statements, fed on stdin) with psql as the superuser over TCP:
    /// `-X -q -A -t -v ON_ERROR_STOP=1`. Returns stdout; the error carries psql's stderr.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        self.psql_as(SUPERUSER, Some(&self.password), database, sql)
    }

    /// Like [`Cluster::psql`], as any role (`password: None` for trust).
    pub fn psql_as(
        &self,
        user: &str,
        password: Option<&str>,
        database: &str,
        sql: &str,
    ) -> Result<String, ClusterError> {
        let psql = self.install.psql_path();
        let mut cmd = Command::new(&psql);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .arg("-h")
            .arg(HOST)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(user)
            .arg("-d")
            .arg(database)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGPASSFILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
        let mut child = cmd.spawn().map_err(|source| ClusterError::Spawn {
            program: psql.display().to_string(),
            source,
        })?;
        // Feed stdin from a thread so a large result cannot deadlock against a full stdout pipe.
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = sql.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let output = child.wait_with_output().map_err(|source| ClusterError::Spawn {
            program: psql.display().to_string(),
            source,
        })?;
        // A write error (EPIPE) only means psql exited early; its status and stderr say why.
        let _ = writer.join();
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(ClusterError::Psql {
                user: user.to_owned(),
                database: database.to_owned(),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// Stop the server: `pg_ctl stop -m fast`, falling back to `-m immediate`. Idempotent; the files
    /// stay until drop.
    pub fn stop(&mut self) {
        // No pid file: never started, already stopped, or the postmaster went away on its own (e.g.
        // the terminal's Ctrl-C reached it): nothing to stop, nothing to warn about.
        if !self.data_dir.join("postmaster.pid").exists() {
            self.running = false;
            return;
        }
        let stopped = |mode: &str| {
            let mut cmd = self.runner.command(
                &self.install.bin("pg_ctl"),
                [
                    OsStr::new("-D"),
                    self.data_dir.as_os_str(),
                    OsStr::new("-m"),
                    OsStr::new(mode),
                    OsStr::new("-w"),
                    OsStr::new("-t"),
                    OsStr::new("30"),
                    OsStr::new("stop"),
                ],
            );
            cmd.current_dir(&self.root);
            run_checked(&mut cmd).is_ok()
        };
        if !stopped("fast") && !stopped("immediate") {
            tracing::warn!(data_dir = %self.data_dir.display(), "could not stop throwaway PostgreSQL");
        }
        self.running = false;
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let pwfile = self.root.join("pwfile");
        write_new_file(&pwfile, self.password.as_bytes(), 0o600)?;
        self.runner.give(&pwfile)?;
        let mut pwfile_arg = OsString::from("--pwfile=");
        pwfile_arg.push(&pwfile);
        let mut cmd = self.runner.command(
            &self.install.bin("initdb"),
            [
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
                OsStr::new("-U"),
                OsStr::new(SUPERUSER),
                &pwfile_arg,
                OsStr::new("--auth-local=trust"),
                OsStr::new("--auth-host=scram-sha-256"),
                OsStr::new("-E"),
                OsStr::new("UTF8"),
                OsStr::new("--locale=C"),
                // Throwaway data: skip the final fsync of the new cluster.
                OsStr::new("--no-sync"),
            ],
        );
        cmd.current_dir(&self.root);
        let result = run_checked(&mut cmd);
        let removed = fs::remove_file(&pwfile);
        result?;
        removed.map_err(|e| ClusterError::io(format!("removing {}", pwfile.display()), e))
    }

    fn write_config(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        let conf = self.data_dir.join("postgresql.conf");
        let text = config_block(&self.root, &opts.settings);
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|e| ClusterError::io(format!("opening {}", conf.display()), e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| ClusterError::io(format!("writing {}", conf.display()), e))?;

        let hba = self.data_dir.join("pg_hba.conf");
        // Truncating keeps the file's owner (postgres) when we are root.
        fs::write(&hba, hba_conf(&opts.hba_prefix))
            .map_err(|e| ClusterError::io(format!("writing {}", hba.display()), e))
    }

    fn start_server(&mut self) -> Result<(), ClusterError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let log_offset = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
            let mut cmd = self.runner.command(
                &self.install.bin("pg_ctl"),
                [
                    OsStr::new("-D"),
                    self.data_dir.as_os_str(),
                    OsStr::new("-l"),
                    self.log_path.as_os_str(),
                    OsStr::new("-o"),
                    OsStr::new(&format!("-p {port}")),
                    OsStr::new("-w"),
                    OsStr::new("-t"),
                    OsStr::new("60"),
                    OsStr::new("start"),
                ],
            );
            cmd.current_dir(&self.root);
            // The postmaster inherits nothing from us but the environment: pg_ctl redirects its
            // stdio to the log file, so capturing pg_ctl's own output cannot hang on it.
            self.running = true;
            let output = run_output(&mut cmd)?;
            if output.status.success() {
                self.port = port;
                return Ok(());
            }
            let attempt_log = read_from(&self.log_path, log_offset);
            // pg_ctl -w may give up while a postmaster is still coming up: make sure it is gone.
            self.stop();
            if attempt < START_ATTEMPTS && port_conflict(&attempt_log) {
                tracing::debug!(port, attempt, "port taken while starting PostgreSQL; retrying");
                continue;
            }
            return Err(ClusterError::StartFailed {
                port,
                attempts: attempt,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                log_tail: log_tail(&self.log_path),
            });
        }
    }

    /// `setsid sh -c '<poll pid>; <pg_ctl stop -m immediate>; rm -rf <root>'`, detached from our
    /// session so a terminal's Ctrl-C or hang-up does not take it down with us. The stop is tried for
    /// a few seconds, in case the process died while `pg_ctl start` was still bringing a postmaster
    /// up (its pid file appears a moment later).
    fn spawn_guardian(&self, pid: u32) -> Result<Child, ClusterError> {
        const SCRIPT: &str = r#"pid="$1"; root="$2"; shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
for _ in 1 2 3; do
  if [ -e "$root/data/postmaster.pid" ]; then "$@" >/dev/null 2>&1; fi
  sleep 1
done
rm -rf -- "$root""#;
        let stop = self.runner.argv(
            &self.install.bin("pg_ctl"),
            [
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
                OsStr::new("-m"),
                OsStr::new("immediate"),
                OsStr::new("-w"),
                OsStr::new("stop"),
            ],
        );
        let setsid = find_program("setsid", &["/usr/bin/setsid", "/bin/setsid"]);
        let mut cmd = match &setsid {
            Some(setsid) => {
                let mut c = Command::new(setsid);
                c.arg("sh");
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.process_group(0);
                c
            }
        };
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("timebox-pg-guardian")
            .arg(pid.to_string())
            .arg(&self.root)
            .args(stop)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().map_err(|source| ClusterError::Spawn {
            program: "guardian shell (setsid sh)".to_string(),
            source,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = fs::remove_dir_all(&self.root) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.root.display(), error = %e, "could not remove throwaway PostgreSQL directory");
            }
        }
        if let Some(mut guardian) = self.guardian.take() {
            let _ = guardian.kill();
            let _ = guardian.wait();
        }
    }
}
