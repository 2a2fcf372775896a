//! When PgBouncer's routes are compared with the active node's file, and how they differ.
//! The symlink is read at every round (cheap); the routes take an admin query and a file
//! read, so they are compared every few rounds, and at once when something suggests they
//! changed.

use crate::admin::{Database, Route};
use crate::config::NodeFile;

/// The routes are compared every this many rounds.
pub const DRIFT_CHECK_ROUNDS: u32 = 3;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriftCadence {
    rounds_since: u32,
}

impl DriftCadence {
    /// Count a round; true if the routes are compared in it. `restarted`: PgBouncer
    /// closed rebouncer's admin session, so it may have re-read another file.
    pub fn round(&mut self, restarted: bool) -> bool {
        self.rounds_since += 1;
        if !restarted && self.rounds_since < DRIFT_CHECK_ROUNDS {
            return false;
        }
        self.rounds_since = 0;
        true
    }

    /// Compare at the next round (after a switch, or a new admin console).
    pub fn soon(&mut self) {
        self.rounds_since = DRIFT_CHECK_ROUNDS;
    }
}

/// How PgBouncer's routes (`SHOW DATABASES`) differ from the active node's file, if they
/// do: the first database it routes elsewhere or lacks. Databases PgBouncer has beyond the
/// file's are not its business (the `*` fallback, an operator's extra entries).
pub fn routes_differ(node: &NodeFile, databases: &[Database]) -> Option<String> {
    node.databases.iter().find_map(|want| {
        let route = Route {
            host: want.host.clone(),
            port: want.port,
        };
        match databases.iter().find(|d| d.name == want.name) {
            Some(d) if d.route == route => None,
            Some(d) => Some(format!(
                "PgBouncer sends database {} to {}, not to {route} as {} says",
                want.name,
                d.route,
                node.path.display()
            )),
            None => Some(format!(
                "PgBouncer has no database {} although {} defines it",
                want.name,
                node.path.display()
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseEntry;

    #[test]
    fn routes_are_compared_every_third_round_or_at_once_after_a_restart() {
        let mut c = DriftCadence::default();
        let rounds: Vec<bool> = (0..6).map(|_| c.round(false)).collect();
        assert_eq!(rounds, [false, false, true, false, false, true]);
        assert!(c.round(true), "PgBouncer restarted");
        assert!(!c.round(false));
        c.soon();
        assert!(c.round(false), "after a switch");
    }

    fn node(port: u16) -> NodeFile {
        NodeFile {
            path: "/etc/pgbouncer/nodes/pg1.ini".into(),
            databases: vec![entry("appdb", port)],
        }
    }

    fn entry(name: &str, port: u16) -> DatabaseEntry {
        DatabaseEntry {
            name: name.into(),
            host: Some("10.0.0.1".into()),
            port,
        }
    }

    fn routed(name: &str, port: u16) -> Database {
        Database {
            name: name.into(),
            route: Route {
                host: Some("10.0.0.1".into()),
                port,
            },
            paused: false,
        }
    }

    #[test]
    fn routes_as_the_file_says_are_no_drift_whatever_else_pgbouncer_has() {
        let got = [routed("appdb", 5432), routed("other", 6000)];
        assert_eq!(routes_differ(&node(5432), &got), None);
    }

    #[test]
    fn a_database_routed_elsewhere_or_missing_is_drift_named_with_the_file() {
        assert_eq!(
            routes_differ(&node(5432), &[routed("appdb", 5433)]).as_deref(),
            Some(
                "PgBouncer sends database appdb to 10.0.0.1:5433, not to 10.0.0.1:5432 as \
                 /etc/pgbouncer/nodes/pg1.ini says"
            )
        );
        assert_eq!(
            routes_differ(&node(5432), &[routed("other", 5432)]).as_deref(),
            Some(
                "PgBouncer has no database appdb although /etc/pgbouncer/nodes/pg1.ini defines it"
            )
        );
    }
}
