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
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use rand::distributions::Alphanumeric;
use rand::Rng;

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

/// How server binaries are run: directly, or as the postgres user when we are root.
#[derive(Debug, Clone)]
enum Runner {
    Direct,
    AsPostgres { uid: u32, gid: u32, switch: Switch },
}

#[derive(Debug, Clone)]
enum Switch {
    /// `runuser -u postgres -- prog args…`
    Runuser(PathBuf),
    /// `su postgres -s /bin/sh -c 'prog args…'`
    Su(PathBuf),
}

impl Runner {
    fn detect() -> Result<Runner, ClusterError> {
        if effective_uid()? != 0 {
            return Ok(Runner::Direct);
        }
        let uid = id_of("-u")?;
        let gid = id_of("-g")?;
        let switch = if let Some(p) = find_program(
            "runuser",
            &["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"],
        ) {
            Switch::Runuser(p)
        } else if let Some(p) = find_program("su", &["/bin/su", "/usr/bin/su"]) {
            Switch::Su(p)
        } else {
            return Err(ClusterError::NoUserSwitch);
        };
        Ok(Runner::AsPostgres { uid, gid, switch })
    }

    /// The full argv (program first) that runs `program args` as the right user.
    fn argv<'a>(&self, program: &Path, args: impl IntoIterator<Item = &'a OsStr>) -> Vec<OsString> {
        let args: Vec<OsString> = args.into_iter().map(OsStr::to_os_string).collect();
        match self {
            Runner::Direct => std::iter::once(program.as_os_str().to_os_string())
                .chain(args)
                .collect(),
            Runner::AsPostgres {
                switch: Switch::Runuser(runuser),
                ..
            } => [
                runuser.as_os_str(),
                OsStr::new("-u"),
                OsStr::new(SUPERUSER),
                OsStr::new("--"),
                program.as_os_str(),
            ]
            .into_iter()
            .map(OsStr::to_os_string)
            .chain(args)
            .collect(),
            Runner::AsPostgres {
                switch: Switch::Su(su),
                ..
            } => {
                let line = std::iter::once(program.as_os_str().to_os_string())
                    .chain(args)
                    .map(|a| shell_quote(&a.to_string_lossy()))
                    .collect::<Vec<_>>()
                    .join(" ");
                vec![
                    su.as_os_str().to_os_string(),
                    OsString::from(SUPERUSER),
                    OsString::from("-s"),
                    OsString::from("/bin/sh"),
                    OsString::from("-c"),
                    OsString::from(line),
                ]
            }
        }
    }

    fn command<'a>(&self, program: &Path, args: impl IntoIterator<Item = &'a OsStr>) -> Command {
        let argv = self.argv(program, args);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        // Keep the caller's libpq environment from steering the server tools.
        for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS"] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Hand a path we created to the user the server runs as.
    fn give(&self, path: &Path) -> Result<(), ClusterError> {
        match self {
            Runner::Direct => Ok(()),
            Runner::AsPostgres { uid, gid, .. } => std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(|e| ClusterError::io(format!("chown postgres {}", path.display()), e)),
        }
    }
}

/// Our effective uid, without `unsafe` (`/proc/self/status`, falling back to `id -u`).
fn effective_uid() -> Result<u32, ClusterError> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        if let Some(euid) = parse_effective_uid(&status) {
            return Ok(euid);
        }
    }
    let output = run_checked(Command::new("id").arg("-u"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().parse().map_err(|_| ClusterError::NoPostgresUser {
        detail: format!("could not read own uid from `id -u` output {text:?}"),
    })
}

/// `id -u postgres` / `id -g postgres`.
fn id_of(flag: &str) -> Result<u32, ClusterError> {
    let output = run_output(Command::new("id").arg(flag).arg(SUPERUSER))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(ClusterError::NoPostgresUser {
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    text.trim().parse().map_err(|_| ClusterError::NoPostgresUser {
        detail: format!("unexpected `id {flag} postgres` output {text:?}"),
    })
}

/// Create `<base>/timebox-pg-<pid>-<random>` with mode 0700, owned by the server's user.
fn create_root_dir(runner: &Runner) -> Result<PathBuf, ClusterError> {
    let base = base_dir(matches!(runner, Runner::AsPostgres { .. }));
    let mut last_err = None;
    for _ in 0..10 {
        let suffix: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(8)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
        let dir = base.join(format!("timebox-pg-{}-{suffix}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                // The umask may have narrowed the mode further; make it exact.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| ClusterError::io(format!("chmod 0700 {}", dir.display()), e))?;
                if let Err(e) = runner.give(&dir) {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => {
                return Err(ClusterError::io(
                    format!("creating a temporary directory in {}", base.display()),
                    e,
                ))
            }
        }
    }
    Err(ClusterError::io(
        format!("creating a temporary directory in {}", base.display()),
        last_err.unwrap_or_else(|| io::Error::other("no unique name found")),
    ))
}

/// `std::env::temp_dir()`, unless it is too long for a unix socket path or (when the server runs as
/// another user) not traversable by everyone; then `/tmp`.
fn base_dir(other_user: bool) -> PathBuf {
    let tmp = std::env::temp_dir();
    let long = tmp.as_os_str().len() > MAX_BASE_DIR_LEN;
    let closed = other_user && !world_traversable(&tmp);
    if long || closed || !tmp.is_dir() {
        PathBuf::from("/tmp")
    } else {
        tmp
    }
}

/// Whether every directory from `/` down to `dir` has the `o+x` bit.
fn world_traversable(dir: &Path) -> bool {
    dir.ancestors()
        .all(|d| d.as_os_str().is_empty() || fs::metadata(d).map(|m| m.mode() & 0o001 != 0).unwrap_or(false))
}

/// The block appended to postgresql.conf: our defaults, then the caller's settings (last one wins).
fn config_block(socket_dir: &Path, settings: &[(String, String)]) -> String {
    let socket_dir = socket_dir.to_string_lossy();
    let defaults: [(&str, &str); 8] = [
        ("listen_addresses", HOST),
        ("unix_socket_directories", socket_dir.as_ref()),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("max_connections", "200"),
        ("logging_collector", "off"),
        ("log_destination", "stderr"),
    ];
    let mut out = String::from("\n# --- written by timebox pgcluster (throwaway cluster) ---\n");
    for (name, value) in defaults
        .into_iter()
        .chain(settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        out.push_str(name);
        out.push_str(" = ");
        out.push_str(&conf_quote(value));
        out.push('\n');
    }
    out
}

/// The whole pg_hba.conf: local trust, the caller's lines, then SCRAM on loopback.
fn hba_conf(prefix: &[String]) -> String {
    let mut out = String::from("# written by timebox pgcluster (throwaway cluster)\n");
    out.push_str("local all all trust\n");
    for line in prefix {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
    out.push_str("host all all ::1/128 scram-sha-256\n");
    out
}

/// A postgresql.conf value: always single-quoted (valid for every parameter type), `'` doubled.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A libpq conninfo value: bare when safe, else single-quoted with `\` and `'` escaped.
fn conninfo_quote(value: &str) -> String {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A POSIX-shell single-quoted word.
fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn validate_setting_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::InvalidSetting {
            name: name.to_owned(),
        })
    }
}

/// Whether the server log of a failed start says the port was taken.
fn port_conflict(log: &str) -> bool {
    log.contains("Address already in use")
        || log.contains("could not create any TCP/IP sockets")
        || log.contains("could not bind")
}

/// The effective uid from `/proc/self/status` (`Uid:\treal\teffective\tsaved\tfs`).
fn parse_effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
}

/// The major version from `pg_ctl (PostgreSQL) 15.18 (Debian …)` or `… 9.6.24`.
fn parse_version_output(text: &str) -> Option<u32> {
    let after = text.split("(PostgreSQL)").nth(1)?;
    parse_major(after.split_whitespace().next()?)
}

/// Leading integer of `15`, `15.18`, `16beta1`, `9.6`.
fn parse_major(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn random_password() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((HOST, 0))
        .map_err(|e| ClusterError::io("binding 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| ClusterError::io("reading the probe listener's address", e))?
        .port();
    Ok(port)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn has_server_binaries(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"))
}

/// `name` from PATH, else the first existing fallback.
fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| is_executable(p))
        })
        .or_else(|| fallbacks.iter().map(PathBuf::from).find(|p| is_executable(p)))
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), ClusterError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| ClusterError::io(format!("creating {}", path.display()), e))?;
    file.write_all(contents)
        .map_err(|e| ClusterError::io(format!("writing {}", path.display()), e))
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run to completion capturing stdout/stderr, whatever the exit status.
fn run_output(cmd: &mut Command) -> Result<Output, ClusterError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn {
            program: describe(cmd),
            source,
        })
}

/// Run to completion; a non-zero exit is an error carrying stderr (or stdout if stderr is empty).
fn run_checked(cmd: &mut Command) -> Result<Output, ClusterError> {
    let output = run_output(cmd)?;
    if output.status.success() {
        return Ok(output);
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    Err(ClusterError::CommandFailed {
        command: describe(cmd),
        status: output.status,
        stderr,
    })
}

/// The log from byte `offset` on (what one start attempt wrote).
fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last few KiB of the server log, for error messages.
fn log_tail(path: &Path) -> String {
    let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let tail = read_from(path, len.saturating_sub(LOG_TAIL_BYTES));
    if tail.is_empty() {
        format!("(no server log at {})", path.display())
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_pg_ctl_output() {
        assert_eq!(
            parse_version_output("pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_version_output("pg_ctl (PostgreSQL) 9.6.24\n"), Some(9));
        assert_eq!(parse_version_output("pg_ctl (PostgreSQL) 17beta2\n"), Some(17));
        assert_eq!(parse_version_output("something else"), None);
    }

    #[test]
    fn major_from_directory_name() {
        assert_eq!(parse_major("16"), Some(16));
        assert_eq!(parse_major("lost+found"), None);
    }

    #[test]
    fn effective_uid_is_second_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t1000\t1000\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn settings_override_defaults_by_coming_last() {
        let block = config_block(
            Path::new("/tmp/x"),
            &[
                ("fsync".into(), "on".into()),
                ("log_statement".into(), "all".into()),
            ],
        );
        let fsync_default = block.find("fsync = 'off'").expect("default present");
        let fsync_override = block.find("fsync = 'on'").expect("override present");
        assert!(fsync_override > fsync_default);
        assert!(block.contains("listen_addresses = '127.0.0.1'\n"));
        assert!(block.contains("unix_socket_directories = '/tmp/x'\n"));
        assert!(block.contains("max_connections = '200'\n"));
        assert!(block.contains("log_statement = 'all'\n"));
    }

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(conf_quote("it's"), "'it''s'");
    }

    #[test]
    fn hba_prefix_precedes_defaults() {
        let hba = hba_conf(&["host all md5_user 127.0.0.1/32 md5".into()]);
        let prefix = hba.find("md5_user").unwrap();
        let default = hba.find("host all all 127.0.0.1/32 scram-sha-256").unwrap();
        assert!(prefix < default);
        assert!(hba.contains("host all all ::1/128 scram-sha-256\n"));
    }

    #[test]
    fn setting_names_are_checked() {
        assert!(validate_setting_name("log_statement").is_ok());
        assert!(validate_setting_name("auto_explain.log_min_duration").is_ok());
        assert!(validate_setting_name("x = 1\nfsync").is_err());
        assert!(validate_setting_name("").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("/usr/lib/postgresql/15/bin/pg_ctl"),
            "/usr/lib/postgresql/15/bin/pg_ctl"
        );
        assert_eq!(shell_quote("-p 5432"), "'-p 5432'");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(conninfo_quote("postgres"), "postgres");
        assert_eq!(conninfo_quote("p w'\\"), r"'p w\'\\'");
    }

    #[test]
    fn port_conflict_detection() {
        assert!(port_conflict(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"
        ));
        assert!(!port_conflict("FATAL:  data directory has wrong ownership"));
    }

    #[test]
    fn default_password_is_random_and_redacted() {
        let a = ClusterOptions::default();
        let b = ClusterOptions::default();
        assert_eq!(a.superuser_password.len(), 24);
        assert_ne!(a.superuser_password, b.superuser_password);
        assert!(!format!("{a:?}").contains(&a.superuser_password));
    }

    #[test]
    fn runner_argv_switches_user() {
        let pg_ctl = Path::new("/usr/lib/postgresql/15/bin/pg_ctl");
        let direct = Runner::Direct.argv(pg_ctl, [OsStr::new("stop")]);
        assert_eq!(direct, vec![OsString::from(pg_ctl), OsString::from("stop")]);

        let runuser = Runner::AsPostgres {
            uid: 1,
            gid: 1,
            switch: Switch::Runuser("/usr/sbin/runuser".into()),
        }
        .argv(pg_ctl, [OsStr::new("-o"), OsStr::new("-p 1")]);
        assert_eq!(
            runuser,
            [
                "/usr/sbin/runuser",
                "-u",
                "postgres",
                "--",
                "/usr/lib/postgresql/15/bin/pg_ctl",
                "-o",
                "-p 1"
            ]
            .map(OsString::from)
            .to_vec()
        );

        let su = Runner::AsPostgres {
            uid: 1,
            gid: 1,
            switch: Switch::Su("/bin/su".into()),
        }
        .argv(pg_ctl, [OsStr::new("-o"), OsStr::new("-p 1")]);
        assert_eq!(su.last().unwrap(), "/usr/lib/postgresql/15/bin/pg_ctl -o '-p 1'");
    }
}
