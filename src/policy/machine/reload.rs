//! A reload, as the policy sees it: the new list of nodes, each carrying what was known of
//! it, and everything that names a node moved to its new place.

use std::time::Instant;

use super::{Known, Policy};
use crate::decide::NodeId;
use crate::policy::checks::Backoff;
use crate::policy::messages::{Carry, Command, Settings};
use crate::policy::pause;

impl Policy {
    /// A reload was applied: carry what is known over to the new list of nodes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reloaded(
        &mut self,
        from: &[Carry],
        old_count: usize,
        settings: Settings,
        console_changed: bool,
        changed: bool,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let mut old: Vec<Option<Known>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        old.resize(old_count.max(old.len()), None);
        let mut moved: Vec<Option<NodeId>> = vec![None; old.len()];
        for (i, carry) in from.iter().enumerate() {
            let known = match *carry {
                Carry::Kept(p) => {
                    moved[p] = Some(i);
                    old[p].take().unwrap_or_else(|| Known::new(now))
                }
                Carry::Restarted(p) => {
                    moved[p] = Some(i);
                    match old[p].take() {
                        // What it was stays known until the new monitor says otherwise.
                        Some(k) => Known {
                            busy: false,
                            hung: false,
                            backoff: Backoff {
                                next_try: now,
                                ..k.backoff
                            },
                            ..k
                        },
                        None => Known::new(now),
                    }
                }
                Carry::Replaced(p) => {
                    moved[p] = Some(i);
                    Known::new(now)
                }
                Carry::New => Known::new(now),
            };
            self.nodes.push(known);
        }
        let remap = |id: NodeId| moved.get(id).copied().flatten();
        let active_removed = self.believed.active.is_some_and(|a| remap(a).is_none());
        self.believed.active = self.believed.active.and_then(remap);
        self.memory.contested = self
            .memory
            .contested
            .iter()
            .filter_map(|c| remap(*c))
            .collect();
        self.memory.unheard_link = self.memory.unheard_link.and_then(remap);
        self.pacing.remap(remap);
        self.reminders.remap(remap);
        if let Some(f) = &mut self.leader {
            f.remap(remap);
        }
        if let Some(h) = &mut self.hold {
            // Not removed: that hold ended at `Reloading`.
            h.lost = remap(h.lost).unwrap_or(h.lost);
        }
        // Its node ids are the old ones: unless every server kept its place, the next
        // round decides again.
        let same_places = moved.len() == self.nodes.len()
            && moved.iter().enumerate().all(|(old, new)| *new == Some(old));
        if !same_places {
            self.last_decision = None;
        }
        if console_changed {
            // Routes are checked through the new console at the next round.
            self.drift_cadence.soon();
        }
        self.settings = settings;
        if let Some(h) = &mut self.hold {
            // A pause under way is measured against the new limit from when it began:
            // an operator who shortens pause_timeout during an outage means now.
            h.deadline = pause::hold_deadline(h.started, h.held_since, settings.pause_timeout);
        }
        if changed {
            // Added or changed servers are checked at once, and the new settings decide
            // from there.
            self.next_round = now;
        }
        if active_removed {
            // The switch goes through the normal, confirmed path at the next round.
            out.push(Command::FindLinked);
        }
    }
}
