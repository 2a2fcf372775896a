//! What the configuration tests share: a working directory with two node files, a
//! minimal valid config, and an environment with nothing from the real one.

use std::fs;
use std::path::Path;

use tempfile::TempDir;

use super::{Config, ConfigError, load};
use crate::conninfo::Env;

pub(super) const NODE: &str = "[databases]\npostgres = host=10.0.0.1 port=5432 dbname=postgres\n\n[pgbouncer]\nlisten_port = 6432\n";

/// Nothing from the real environment; a user name, since libpq needs one.
pub(super) fn test_env() -> Env {
    Env {
        os_user: Some("rebouncer".into()),
        ..Env::default()
    }
}

/// A working directory with `nodes/db1.ini` and `nodes/db2.ini`; configs are written
/// as `rebouncer.ini` there and loaded with that directory as the working directory.
pub(super) struct Dir {
    tmp: TempDir,
}

impl Dir {
    pub(super) fn new() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("nodes")).unwrap();
        for n in ["db1", "db2"] {
            fs::write(tmp.path().join(format!("nodes/{n}.ini")), NODE).unwrap();
        }
        Dir { tmp }
    }
    pub(super) fn path(&self) -> &Path {
        self.tmp.path()
    }
    pub(super) fn write(&self, name: &str, text: &str) {
        fs::write(self.path().join(name), text).unwrap();
    }
    pub(super) fn load(&self, text: &str) -> Result<Config, ConfigError> {
        self.write("rebouncer.ini", text);
        load(Path::new("rebouncer.ini"), self.path(), &test_env())
    }
    pub(super) fn err(&self, text: &str) -> String {
        match self.load(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.0,
        }
    }
}

pub(super) const GLOBAL: &str = "[global]\n\
    pgbouncer=host=/tmp port=6432 dbname=pgbouncer user=pgbouncer\n\
    symlink=pgbouncer.ini\n\
    configdir=nodes\n";
pub(super) const SERVERS: &str = "[servers]\n\
    db2=host=10.0.0.2 dbname=postgres user=rebouncer\n\
    db1=host=10.0.0.1 dbname=postgres user=rebouncer\n";

pub(super) fn with_global(extra: &str) -> String {
    format!("{GLOBAL}{extra}\n{SERVERS}")
}
