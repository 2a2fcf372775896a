//! A configuration re-read on SIGHUP: refused whole, or applied whole. What it changes
//! is worked out by [`crate::policy::reload_plan`]; this restarts the monitors it names
//! and carries what is known over to the new list of nodes.

use super::*;

impl<C: Console> Daemon<C> {
    /// Apply a configuration re-read on SIGHUP, or refuse it. Everything is checked
    /// before anything is changed: a reload applies whole or not at all.
    pub(super) async fn reload(&mut self, r: Reload) {
        match r.config {
            Err(e) => self.reload_refused(e.to_string()),
            Ok(new) => match reload_plan::plan(&self.cfg, new) {
                Err(e) => self.reload_refused(e),
                Ok(plan) => match node_files_readable(&plan.must_read, &self.cfg.configdir).await {
                    Err(e) => self.reload_refused(e),
                    Ok(()) => self.apply_reload(plan).await,
                },
            },
        }
        if let Some(done) = r.done {
            let _ = done.send(());
        }
    }

    pub(super) fn reload_refused(&mut self, error: String) {
        let text =
            format!("configuration reload refused, the running configuration stays: {error}");
        error!("{text}");
        self.status.send_modify(|s| {
            s.counters.reloads_failed += 1;
            let at = SystemTime::now();
            s.reload = Some(ReloadStatus {
                at,
                error: Some(error),
                changes: Vec::new(),
                not_applied: Vec::new(),
            });
            s.events.push(at, Kind::ConfigReloadFailed, None, text);
        });
    }

    pub(super) async fn apply_reload(&mut self, plan: ReloadPlan) {
        let ReloadPlan {
            new,
            changes,
            not_applied,
            restart_all,
            new_console,
            removed,
            must_read: _,
            new_watch,
        } = plan;
        // A hold waits for its lost master to come back; one that is no longer
        // configured never will: its clients are let go first (through the console they
        // were paused on).
        let removed: Vec<NodeId> = removed
            .iter()
            .filter_map(|name| self.nodes.iter().position(|n| n.name == *name))
            .collect();
        self.feed(Input::Reloading { removed }).await;

        // The nodes in the new file order; `moved[old index]` is the new one.
        let old_active = self.policy.believed().active;
        let mut old: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        let old_count = old.len();
        let mut moved: Vec<Option<NodeId>> = vec![None; old.len()];
        let mut from = Vec::with_capacity(new.servers.len());
        let mut nodes = Vec::with_capacity(new.servers.len());
        for (i, server) in new.servers.iter().enumerate() {
            let prev = old
                .iter()
                .position(|n| n.as_ref().is_some_and(|n| n.name == server.name));
            let same_server = prev.is_some_and(|p| self.cfg.servers[p].conninfo == server.conninfo);
            let node = match prev.and_then(|p| old[p].take().map(|n| (p, n))) {
                Some((p, n)) if same_server && !restart_all => {
                    moved[p] = Some(i);
                    from.push(Carry::Kept(p));
                    n
                }
                Some((p, n)) if same_server => {
                    // The same server with new monitor settings: what it was stays known
                    // until the new monitor says otherwise.
                    moved[p] = Some(i);
                    from.push(Carry::Restarted(p));
                    let key = self.next_key;
                    self.next_key += 1;
                    Node {
                        key,
                        requests: (self.spawn)(key, server, &new),
                        ..n
                    }
                }
                other => {
                    match other {
                        Some((p, _dropped)) => {
                            moved[p] = Some(i);
                            from.push(Carry::Replaced(p));
                        }
                        None => from.push(Carry::New),
                    }
                    let key = self.next_key;
                    self.next_key += 1;
                    Node::new(server.name.clone(), key, (self.spawn)(key, server, &new))
                }
            };
            nodes.push(node);
        }
        // Dropping the removed nodes drops their request channels: their monitors end
        // and close their kept connections.
        drop(old);
        self.nodes = nodes;

        let active_removed = old_active.is_some_and(|a| moved[a].is_none());

        if new_console || restart_all {
            self.console = self.console.reconfigured(&new.pgbouncer, new.timeout);
            // Routes are checked through the new console at the next round.
            self.watch_session = None;
        }
        let pause_changed = new.pause_on_failover != self.cfg.pause_on_failover
            || new.pause_timeout != self.cfg.pause_timeout;
        let file = new.file.display().to_string();
        for w in new
            .warnings
            .iter()
            .filter(|w| !self.cfg.warnings.contains(w))
        {
            warn!("{w}");
        }
        self.cfg = new;
        self.state.bound_writes(self.cfg.timeout);
        if new_watch {
            self.restart_leader();
        }
        self.feed(Input::Reloaded {
            from,
            old_count,
            settings: Settings::of(&self.cfg),
            console_changed: new_console || restart_all,
            changed: !changes.is_empty(),
        })
        .await;

        let summary = if changes.is_empty() {
            "no changes".to_string()
        } else {
            changes.join("; ")
        };
        let text = format!("configuration reloaded from {file}: {summary}");
        info!("{text}");
        if active_removed {
            warn!(
                "the active node was removed from the configuration; PgBouncer's symlink points at {}, the next round switches to the master",
                self.active_name()
            );
        }
        let kept_text = (!not_applied.is_empty()).then(|| {
            format!(
                "configuration reload: NOT applied, needs a restart: {}",
                not_applied.join("; ")
            )
        });
        if let Some(t) = &kept_text {
            warn!("{t}");
        }
        let warnings = self.cfg.warnings.clone();
        let interval = self.cfg.interval;
        let endpoint = self.cfg.pgbouncer.endpoint.clone();
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        self.status.send_modify(|s| {
            let mut old = std::mem::take(&mut s.nodes);
            s.nodes = names
                .iter()
                .map(|name| match old.iter().position(|n| n.name == *name) {
                    // Its counters go on (monotonic series per node name).
                    Some(p) => old.swap_remove(p),
                    None => NodeStatus::new(name),
                })
                .collect();
            s.interval = interval;
            s.pgbouncer = endpoint;
            s.config_warnings = warnings;
            s.counters.reloads_ok += 1;
            let at = SystemTime::now();
            s.reload = Some(ReloadStatus {
                at,
                error: None,
                changes,
                not_applied,
            });
            s.events.push(at, Kind::ConfigReload, None, text);
            if let Some(t) = kept_text {
                s.events.push(at, Kind::ConfigReload, None, t);
            }
        });
        self.publish();
        if pause_changed {
            self.check_pause_settings().await;
        }
    }
}

/// The node files a reload keeps using must be there and valid, as at start; read off the
/// runtime thread.
pub(super) async fn node_files_readable(
    files: &[(String, std::path::PathBuf)],
    configdir: &std::path::Path,
) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    let files = files.to_vec();
    let dir = configdir.display().to_string();
    tokio::task::spawn_blocking(move || {
        for (name, file) in &files {
            config::read_node_file(file).map_err(|e| {
                format!(
                    "{e} (server {name}: configdir {dir} is kept until a restart, so its node file must be there)"
                )
            })?;
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(format!("cannot read the node files: {e}")))
}
