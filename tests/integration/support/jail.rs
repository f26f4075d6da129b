//! Running the binaries as another user, for the tests that need root (CI runs as root):
//! directories, copies of the binaries and a Redis socket that any user can reach, since the
//! build tree and the temp dirs may be private to root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{RedisServer, temp_dir};

/// `nobody`'s uid, and `nogroup`'s gid on Debian.
pub const NOBODY: u32 = 65534;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A directory everybody can enter (temp dirs are 700), for what the workers must reach.
pub fn open_dir() -> tempfile::TempDir {
    let d = temp_dir();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A copy of the binary `bin` (`rqworker` or `rq-supervisor`) in `dir`, executable by any user.
pub fn public_copy(dir: &Path, bin: &str) -> PathBuf {
    let from = match bin {
        "rqworker" => env!("CARGO_BIN_EXE_rqworker"),
        "rq-supervisor" => env!("CARGO_BIN_EXE_rq-supervisor"),
        other => panic!("no binary {other}"),
    };
    let p = dir.join(bin);
    std::fs::copy(from, &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A test redis whose socket any user can connect to.
pub fn public_redis(extra: &[&str]) -> RedisServer {
    let mut args = vec!["--unixsocketperm", "777"];
    args.extend_from_slice(extra);
    let redis = RedisServer::start_with(&args);
    std::fs::set_permissions(redis.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    redis
}
