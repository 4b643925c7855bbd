//! Private files: the store (token verifiers) and the audit trail (every statement) are readable by
//! timebox's own user only.
//!
//! Where it sits: [`super::sqlite::SqliteStore::open`] and the audit log's SQLite database, journal
//! segments and JSONL sink create their files and directories through these helpers. Decisions:
//! - files are created `0600`, directories `0700` (both before the umask, which can only narrow);
//! - an existing file that is readable or writable by group or others is tightened to `0600`, with a
//!   warning naming it (refusing to start would take the proxy down over a fixable mode; leaving it
//!   would keep secrets readable);
//! - existing directories are left as they are (a store in `/var/lib/timebox` or the working
//!   directory is not ours to change); the files in them are private either way;
//! - SQLite creates its `-wal`, `-shm` and `-journal` side files with the database file's mode, so the
//!   database file is created (or tightened) before SQLite opens it, and existing side files are
//!   tightened too.
//!
//! On non-Unix platforms these are plain creates.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Mode of every file timebox creates for the store and the audit trail.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory timebox creates for them.
pub const DIR_MODE: u32 = 0o700;
/// SQLite's side files of a database `x.db`: `x.db-wal`, `x.db-shm`, `x.db-journal`.
pub const SQLITE_SIDE_SUFFIXES: &[&str] = &["-wal", "-shm", "-journal"];

/// `OpenOptions` whose `create` makes a `0600` file.
pub fn private_options() -> OpenOptions {
    #[allow(unused_mut)]
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
}

/// `create_dir_all`, each directory it creates `0700`.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    #[allow(unused_mut)]
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)
}

/// Whether a file of mode `mode` is open to group or others and must be tightened. Pure.
pub fn is_too_open(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Tightens `path` to `0600` if it exists and is open to group or others (with a warning). Returns
/// whether it changed anything.
pub fn tighten(path: &Path) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_file() && is_too_open(mode) {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))?;
            tracing::warn!(path = %path.display(), was = format!("{mode:o}"), now = "600",
                "tightened the permissions of a store/audit file that others could read");
            return Ok(true);
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(false)
}

/// Prepares a SQLite database path before SQLite opens it: creates its directory (`0700`), creates
/// the file `0600` if missing, and tightens it and any existing side files. On failure, the path at
/// fault and the error.
pub fn prepare_sqlite_file(path: &Path) -> Result<(), (PathBuf, io::Error)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir_all(dir).map_err(|e| (dir.to_owned(), e))?;
    }
    let _created: File = private_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| (path.to_owned(), e))?;
    tighten(path).map_err(|e| (path.to_owned(), e))?;
    for suffix in SQLITE_SIDE_SUFFIXES {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        tighten(&side).map_err(|e| (side.clone(), e))?;
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn only_owner_bits_are_private() {
        assert!(!is_too_open(0o600));
        assert!(!is_too_open(0o400));
        assert!(is_too_open(0o644));
        assert!(is_too_open(0o640));
        assert!(is_too_open(0o602));
    }

    #[test]
    fn new_files_and_directories_are_private_and_loose_ones_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("a/b/x.db");
        prepare_sqlite_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);

        let wal = tmp.path().join("a/b/x.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o664)).unwrap();
        prepare_sqlite_file(&db).unwrap();
        assert_eq!((mode(&db), mode(&wal)), (0o600, 0o600));
        assert!(!tighten(&db).unwrap(), "already private");
        assert!(!tighten(&tmp.path().join("missing")).unwrap());
    }
}
