//! The development secret of `floodgate serve` without a configured JWT key, kept so that
//! `floodgate token` can sign for it.
//!
//! Whoever can write this file can mint tokens for any user, and whoever can read it can too,
//! so it lives only in a directory private to the user running floodgate:
//!
//! - `$XDG_STATE_HOME/floodgate/`, else `$HOME/.local/state/floodgate/`, else
//!   `<temp dir>/floodgate-<uid>/`;
//! - that directory is created with mode 0700, and refused unless it is a real directory (not
//!   a symlink) owned by this user with no access for group or others;
//! - the file is created with `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600, and read with
//!   `O_NOFOLLOW`, refused unless it is a regular file owned by this user with no access for
//!   group or others, at most [`MAX_LEN`] bytes, and a secret of the minimum length.
//!
//! Nothing here falls back silently: a refused directory or file is an error that names the
//! path and what is wrong with it.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Error};

/// The most a dev-secret file may hold.
pub(crate) const MAX_LEN: u64 = 4096;

/// The directory the dev secret lives in (not checked).
pub(crate) fn dir() -> PathBuf {
    state_dir_from(
        std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()),
        std::env::var_os("HOME").filter(|v| !v.is_empty()),
    )
}

fn state_dir_from(xdg: Option<std::ffi::OsString>, home: Option<std::ffi::OsString>) -> PathBuf {
    match (xdg, home) {
        (Some(x), _) => PathBuf::from(x).join("floodgate"),
        (None, Some(h)) => PathBuf::from(h).join(".local/state/floodgate"),
        (None, None) => {
            std::env::temp_dir().join(format!("floodgate-{}", rustix::process::geteuid().as_raw()))
        }
    }
}

/// Where the dev secret is kept.
pub(crate) fn path() -> PathBuf {
    dir().join("dev-secret")
}

fn refused(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Config(ConfigError::new(
        "jwt_hs256_secret",
        format!(
            "the dev secret at {} is not used: {why} (remove it, or configure a key: \
             FLOODGATE_JWT_HS256_SECRET, --jwt-hs256-secret or the config file)",
            path.display()
        ),
    ))
}

/// Checks that `meta` (of `path`, not followed) belongs to this user and gives group and
/// others no access.
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), Error> {
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refused(
            path,
            format_args!(
                "it is owned by uid {}, not by this user (uid {me})",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refused(
            path,
            format_args!(
                "its mode is {:04o}: group or others have access (it must be 0700 or 0600)",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Creates the private directory if it is missing (its parents with default modes), and
/// checks it.
fn private_dir(dir: &Path) -> Result<(), Error> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(refused(
            dir,
            "it is not a directory (a symlink is not followed)",
        ));
    }
    check_private(dir, &meta)
}

/// Reads the secret at `path` if the file exists, refusing one that is not private.
fn read(path: &Path) -> Result<Option<String>, Error> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refused(path, "it is a symlink"))
        }
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(refused(path, "it is not a regular file"));
    }
    check_private(path, &meta)?;
    if meta.len() > MAX_LEN {
        return Err(refused(path, format_args!("it is over {MAX_LEN} bytes")));
    }
    let mut text = String::new();
    (&mut file).take(MAX_LEN).read_to_string(&mut text)?;
    let secret = text.trim();
    if secret.len() < crate::config::MIN_HS256_SECRET {
        return Err(refused(
            path,
            format_args!(
                "it holds fewer than {} bytes",
                crate::config::MIN_HS256_SECRET
            ),
        ));
    }
    Ok(Some(secret.to_owned()))
}

/// The saved dev secret, for `floodgate token`: `None` if there is none.
pub(crate) fn load() -> Result<Option<String>, Error> {
    let path = path();
    match std::fs::symlink_metadata(dir()) {
        Ok(meta) if meta.file_type().is_dir() => check_private(&dir(), &meta)?,
        Ok(_) => return Err(refused(&dir(), "it is not a directory")),
        Err(_) => return Ok(None),
    }
    read(&path)
}

/// The saved dev secret, created (32 random bytes, hex) if there is none.
pub(crate) fn load_or_create() -> Result<String, Error> {
    let dir = dir();
    private_dir(&dir)?;
    let path = dir.join("dev-secret");
    if let Some(s) = read(&path)? {
        return Ok(s);
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true) // O_CREAT | O_EXCL: never through an existing file or symlink
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("floodgate-devsecret-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_directory_comes_from_xdg_then_home_then_a_per_user_temp_dir() {
        let x = state_dir_from(Some("/x".into()), Some("/h".into()));
        assert_eq!(x, Path::new("/x/floodgate"));
        let h = state_dir_from(None, Some("/h".into()));
        assert_eq!(h, Path::new("/h/.local/state/floodgate"));
        let t = state_dir_from(None, None);
        let uid = rustix::process::geteuid().as_raw();
        assert!(t.ends_with(format!("floodgate-{uid}")), "{}", t.display());
    }

    #[test]
    fn a_file_group_or_others_can_read_is_refused() {
        let d = tmp("mode");
        let p = d.join("dev-secret");
        std::fs::write(&p, "a".repeat(64)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("0644") && e.contains("group or others"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), "a".repeat(64));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_symlink_is_never_followed() {
        let d = tmp("link");
        let target = d.join("elsewhere");
        std::fs::write(&target, "b".repeat(64)).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let p = d.join("dev-secret");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        // A directory that is a symlink is refused too.
        let real = d.join("real");
        std::fs::create_dir(&real).unwrap();
        let linked = d.join("linked");
        std::os::unix::fs::symlink(&real, &linked).unwrap();
        let e = private_dir(&linked).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_shared_directory_is_refused_and_an_oversized_or_short_file_too() {
        let d = tmp("dir");
        let shared = d.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = private_dir(&shared).unwrap_err().to_string();
        assert!(e.contains("1777"), "{e}");
        let big = d.join("big");
        std::fs::write(&big, "c".repeat(5000)).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&big)
            .unwrap_err()
            .to_string()
            .contains("over 4096 bytes"));
        let short = d.join("short");
        std::fs::write(&short, "tiny").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&short).unwrap_err().to_string().contains("fewer than"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
