//! The switch tests' world: two node files, the link, a fake PgBouncer and a state file.

use std::fs;
use std::path::{Path, PathBuf};

use crate::admin::Database;
use crate::fake_bouncer::FakeBouncer;
use crate::state::StateFile;

use super::{SwitchError, SwitchPlan, Switched, replace_symlink, run};

/// Two nodes whose files route `appdb` and `other` to ports 5432 and 5433, the link on
/// node 1, a fake PgBouncer that loaded it, and a state file beside them.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub link: PathBuf,
    pub db1: PathBuf,
    pub db2: PathBuf,
    pub fake: FakeBouncer,
    pub state: StateFile,
}

pub fn node_text(port: u16) -> String {
    format!(
        "[databases]\nappdb = host=127.0.0.1 port={port} dbname=appdb\n\
         other = host=127.0.0.1 port={port} dbname=other\n[pgbouncer]\nlisten_port = 6432\n"
    )
}

pub fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (db1, db2) = (dir.path().join("db1.ini"), dir.path().join("db2.ini"));
    fs::write(&db1, node_text(5432)).unwrap();
    fs::write(&db2, node_text(5433)).unwrap();
    let link = dir.path().join("pgbouncer.ini");
    replace_symlink(&link, &db1).unwrap();
    let fake = FakeBouncer::new(link.clone());
    let state = StateFile::load(&dir.path().join("rebouncer.state")).unwrap();
    Setup {
        dir,
        link,
        db1,
        db2,
        fake,
        state,
    }
}

impl Setup {
    pub async fn switch(
        &mut self,
        to: &Path,
        last: Option<&[Database]>,
    ) -> Result<Switched, SwitchError> {
        let plan = SwitchPlan {
            symlink: &self.link,
            node_file: to,
            last_confirmed: last,
            paused: &[],
        };
        run(&self.fake, &mut self.state, plan).await
    }

    pub fn state_on_disk(&self) -> String {
        fs::read_to_string(self.state.path()).unwrap_or_default()
    }
}

pub fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
