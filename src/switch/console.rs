//! The admin-console steps of a switch that need more than one command: `RESUME` retried
//! on a fresh login, `KILL` and `RESUME` sent back to back, and `server_login_retry`
//! lifted around the `RESUME` that ends a failover pause. Each step says what it did; what
//! to remember of it is the caller's business.

use std::time::Duration;

use crate::admin::{self, AdminError, Console, Session, quote_ident};

/// RESUME went through, or there was nothing to resume: "is not paused" (an earlier
/// attempt got through, or PgBouncer restarted) or "no such database" (gone from the
/// config).
pub fn is_resumed(result: &Result<(), AdminError>) -> bool {
    match result {
        Ok(()) => true,
        Err(AdminError::Command { detail, .. }) => {
            detail.contains("is not paused") || detail.contains("no such database")
        }
        Err(_) => false,
    }
}

/// An admin session that is opened again after a failure that may have closed it.
pub struct Conn<'a, C: Console> {
    pub console: &'a C,
    pub session: Option<C::Session>,
}

impl<C: Console> Conn<'_, C> {
    pub async fn command(&mut self, command: &str) -> Result<(), AdminError> {
        self.rows(command).await.map(|_| ())
    }

    pub async fn rows(&mut self, command: &str) -> Result<Vec<admin::Row>, AdminError> {
        let s = match self.session.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.console.session().await?,
        };
        let result = s.command(command).await;
        if matches!(&result, Ok(_) | Err(AdminError::Command { .. })) {
            self.session = Some(s);
        }
        result
    }

    /// Two commands sent back to back, before the first answer (`Err`: no login).
    pub async fn pair(
        &mut self,
        first: &str,
        second: &str,
    ) -> Result<(Result<(), AdminError>, Result<(), AdminError>), AdminError> {
        let s = match self.session.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.console.session().await?,
        };
        let (a, b) = tokio::join!(s.command(first), s.command(second));
        let (a, b) = (a.map(|_| ()), b.map(|_| ()));
        if answered(&a) && answered(&b) {
            self.session = Some(s);
        }
        Ok((a, b))
    }
}

/// PgBouncer answered (maybe with an error), so the session is fine. A timeout or a
/// closed connection: log in anew for the next command.
fn answered(result: &Result<(), AdminError>) -> bool {
    matches!(result, Ok(()) | Err(AdminError::Command { .. }))
}

/// [`resume_each`]; when any of `databases` is in `paused`, with the login gate lifted
/// around it (see [`lift_login_retry`]).
pub async fn resume_gated<C: Console>(
    conn: &mut Conn<'_, C>,
    databases: &[String],
    paused: &[String],
    warnings: &mut Vec<String>,
) -> (Vec<String>, Vec<String>, Option<AdminError>) {
    let ours: Vec<String> = databases
        .iter()
        .filter(|d| paused.contains(d))
        .cloned()
        .collect();
    if ours.is_empty() {
        return resume_each(conn, databases).await;
    }
    let old = lift_login_retry(conn).await;
    let result = resume_each(conn, databases).await;
    if let Some(old) = old {
        wait_for_servers(conn, &ours).await;
        let set = format!("SET server_login_retry = '{}'", old.replace('\'', ""));
        if let Err(e) = conn.command(&set).await {
            warnings.push(format!(
                "server_login_retry could not be set back to {old} after the pause: {e}; PgBouncer retries failed \
                 server logins without delay until its next RELOAD"
            ));
        }
    }
    result
}

/// A pool whose last server login failed (the old primary going down, or a login that
/// the pause itself cut off) makes PgBouncer hold back new server logins for
/// `server_login_retry` (15 s by default) and turn away clients that find no server; only
/// a successful login or `KILL` clears that, and `KILL` would drop the very clients the
/// pause held. So `server_login_retry` is set to 0 until the resumed clients have a server
/// (or a second has passed) and then set back. Returns the old value when it was changed
/// or may have been.
async fn lift_login_retry<C: Console>(conn: &mut Conn<'_, C>) -> Option<String> {
    let rows = conn.rows("SHOW CONFIG").await.ok()?;
    let old = rows
        .iter()
        .find(|r| r.get("key") == Some("server_login_retry"))
        .and_then(|r| r.get("value"))?
        .to_string();
    if old.trim().parse::<f64>().is_ok_and(|v| v == 0.0) {
        return None;
    }
    // A SET that was not answered may have taken effect: set it back all the same.
    let set = conn.command("SET server_login_retry = '0'").await;
    (set.is_ok() || !answered(&set)).then_some(old)
}

/// Until every one of `databases` has a server connection or no waiting client, at most
/// a second: the first successful login clears the pool's failure for good.
async fn wait_for_servers<C: Console>(conn: &mut Conn<'_, C>, databases: &[String]) {
    let end = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < end {
        let Ok(rows) = conn.rows("SHOW POOLS").await else {
            return;
        };
        let count = |r: &admin::Row, cols: &[&str]| -> u64 {
            cols.iter()
                .filter_map(|c| r.get(c).and_then(|v| v.parse::<u64>().ok()))
                .sum()
        };
        let pending = rows.iter().any(|r| {
            r.get("database")
                .is_some_and(|d| databases.iter().any(|x| x == d))
                && count(r, &["cl_waiting"]) > 0
                && count(r, &["sv_active", "sv_idle", "sv_used", "sv_tested"]) == 0
        });
        if !pending {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `RESUME` each database; a failure is tried once more (on a new session if it was
/// lost), since a database left killed holds every new client. "is not paused" (an
/// earlier attempt got through, or PgBouncer restarted) and "no such database" (gone from
/// the config) count as done. Returns (done, still paused, last error).
pub async fn resume_each<C: Console>(
    conn: &mut Conn<'_, C>,
    databases: &[String],
) -> (Vec<String>, Vec<String>, Option<AdminError>) {
    let (mut done, mut left, mut last_error) = (Vec::new(), Vec::new(), None);
    for db in databases {
        let command = format!("RESUME {}", quote_ident(db));
        let mut resumed = false;
        for _attempt in 0..2 {
            let result = conn.command(&command).await;
            if is_resumed(&result) {
                resumed = true;
                break;
            }
            last_error = result.err();
        }
        if resumed {
            done.push(db.clone());
        } else {
            left.push(db.clone());
        }
    }
    (done, left, last_error)
}

/// Resume `databases` (no state file involved).
pub async fn resume<C: Console>(
    bouncer: &C,
    databases: &[String],
) -> Result<(), (Vec<String>, AdminError)> {
    let mut conn = Conn {
        console: bouncer,
        session: None,
    };
    match resume_each(&mut conn, databases).await {
        (_, left, Some(e)) if !left.is_empty() => Err((left, e)),
        _ => Ok(()),
    }
}
