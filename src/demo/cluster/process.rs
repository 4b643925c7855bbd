//! How a throwaway cluster's server binaries are run and where its files go: the switch to the
//! `postgres` user when we are root, the private directory, the postgresql.conf and pg_hba.conf text,
//! quoting for each of those languages, and the small process helpers [`super::Cluster`] is built on.
//!
//! Where it sits: under [`crate::demo::cluster`], outside the serving path. Blocking `std::process`
//! code, like its parent. What it must never do: write outside the cluster's own directory, or hand a
//! value to a config file, conninfo string or shell unquoted.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::distributions::Alphanumeric;
use rand::Rng;

use super::{ClusterError, HOST, LOG_TAIL_BYTES, MAX_BASE_DIR_LEN, SUPERUSER};

/// How server binaries are run: directly, or as the postgres user when we are root.
#[derive(Debug, Clone)]
pub(super) enum Runner {
    Direct,
    AsPostgres { uid: u32, gid: u32, switch: Switch },
}

#[derive(Debug, Clone)]
pub(super) enum Switch {
    /// `runuser -u postgres -- prog args…`
    Runuser(PathBuf),
    /// `su postgres -s /bin/sh -c 'prog args…'`
    Su(PathBuf),
}

impl Runner {
    pub(super) fn detect() -> Result<Runner, ClusterError> {
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
    pub(super) fn argv<'a>(
        &self,
        program: &Path,
        args: impl IntoIterator<Item = &'a OsStr>,
    ) -> Vec<OsString> {
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

    pub(super) fn command<'a>(&self, program: &Path, args: impl IntoIterator<Item = &'a OsStr>) -> Command {
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
    pub(super) fn give(&self, path: &Path) -> Result<(), ClusterError> {
        match self {
            Runner::Direct => Ok(()),
            Runner::AsPostgres { uid, gid, .. } => std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(|e| ClusterError::io(format!("chown postgres {}", path.display()), e)),
        }
    }
}

/// Our effective uid, without `unsafe` (`/proc/self/status`, falling back to `id -u`).
pub(super) fn effective_uid() -> Result<u32, ClusterError> {
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
pub(super) fn id_of(flag: &str) -> Result<u32, ClusterError> {
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
pub(super) fn create_root_dir(runner: &Runner) -> Result<PathBuf, ClusterError> {
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
pub(super) fn base_dir(other_user: bool) -> PathBuf {
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
pub(super) fn world_traversable(dir: &Path) -> bool {
    dir.ancestors()
        .all(|d| d.as_os_str().is_empty() || fs::metadata(d).map(|m| m.mode() & 0o001 != 0).unwrap_or(false))
}

/// The block appended to postgresql.conf: our defaults, then the caller's settings (last one wins).
pub(super) fn config_block(socket_dir: &Path, settings: &[(String, String)]) -> String {
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
pub(super) fn hba_conf(prefix: &[String]) -> String {
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
pub(super) fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A libpq conninfo value: bare when safe, else single-quoted with `\` and `'` escaped.
pub(super) fn conninfo_quote(value: &str) -> String {
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
pub(super) fn shell_quote(word: &str) -> String {
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

pub(super) fn validate_setting_name(name: &str) -> Result<(), ClusterError> {
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
pub(super) fn port_conflict(log: &str) -> bool {
    log.contains("Address already in use")
        || log.contains("could not create any TCP/IP sockets")
        || log.contains("could not bind")
}

/// The effective uid from `/proc/self/status` (`Uid:\treal\teffective\tsaved\tfs`).
pub(super) fn parse_effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
}

/// The major version from `pg_ctl (PostgreSQL) 15.18 (Debian …)` or `… 9.6.24`.
pub(super) fn parse_version_output(text: &str) -> Option<u32> {
    let after = text.split("(PostgreSQL)").nth(1)?;
    parse_major(after.split_whitespace().next()?)
}

/// Leading integer of `15`, `15.18`, `16beta1`, `9.6`.
pub(super) fn parse_major(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub(super) fn random_password() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

pub(super) fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((HOST, 0))
        .map_err(|e| ClusterError::io("binding 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| ClusterError::io("reading the probe listener's address", e))?
        .port();
    Ok(port)
}

pub(super) fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub(super) fn has_server_binaries(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"))
}

/// `name` from PATH, else the first existing fallback.
pub(super) fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| is_executable(p))
        })
        .or_else(|| fallbacks.iter().map(PathBuf::from).find(|p| is_executable(p)))
}

pub(super) fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), ClusterError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| ClusterError::io(format!("creating {}", path.display()), e))?;
    file.write_all(contents)
        .map_err(|e| ClusterError::io(format!("writing {}", path.display()), e))
}

pub(super) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run to completion capturing stdout/stderr, whatever the exit status.
pub(super) fn run_output(cmd: &mut Command) -> Result<Output, ClusterError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn {
            program: describe(cmd),
            source,
        })
}

/// Run to completion; a non-zero exit is an error carrying stderr (or stdout if stderr is empty).
pub(super) fn run_checked(cmd: &mut Command) -> Result<Output, ClusterError> {
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
pub(super) fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last few KiB of the server log, for error messages.
pub(super) fn log_tail(path: &Path) -> String {
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
        let a = super::super::ClusterOptions::default();
        let b = super::super::ClusterOptions::default();
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
