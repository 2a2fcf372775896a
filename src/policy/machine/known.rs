//! What the policy knows of each server, and how an answer changes it.

use std::time::Instant;

use super::Policy;
use crate::decide::{self, NodeId, NodeState, Seen};
use crate::policy::checks::Backoff;
use crate::policy::messages::Answer;

/// What the policy knows of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// What it answered last; `None` before its first answer.
    pub state: Option<NodeState>,
    /// Its last check timed out.
    pub hung: bool,
    /// A check of it is under way.
    pub busy: bool,
    /// The last timeline it reported while up.
    pub timeline: Option<decide::Timeline>,
    /// Set by a check on a new connection that failed while the kept session answers;
    /// cleared by one that succeeds, or when the server's state changes.
    pub refuses_new: Option<String>,
    /// When it was last asked on a new connection before a verdict.
    pub rechecked: Option<Instant>,
    /// A new connection to it worked since it last changed state.
    pub accepted_new: bool,
    pub backoff: Backoff,
}

impl Known {
    pub(super) fn new(now: Instant) -> Known {
        Known {
            state: None,
            hung: false,
            busy: false,
            timeline: None,
            refuses_new: None,
            rechecked: None,
            accepted_new: false,
            backoff: Backoff::new(now),
        }
    }

    /// What the verdict sees of it.
    pub(super) fn seen(&self) -> Seen {
        Seen {
            state: self.state.unwrap_or(NodeState::Down),
            timeline: self
                .timeline
                .filter(|_| self.state != Some(NodeState::Down)),
            refuses_new: self.refuses_new.is_some(),
            silent: self.state.is_none() || (self.state == Some(NodeState::Down) && self.hung),
        }
    }
}

impl Policy {
    pub(super) fn retry_failing_now(&mut self, now: Instant) {
        for n in self.nodes.iter_mut() {
            n.backoff.retry_now(now);
        }
    }

    /// Record one answer; true if the server's state changed.
    pub(super) fn record(&mut self, node: NodeId, answer: Answer, now: Instant) -> bool {
        let (fast, interval) = (self.settings.fast_interval, self.settings.interval);
        let Some(n) = self.nodes.get_mut(node) else {
            return false;
        };
        n.busy = false;
        n.hung = answer.hung;
        let changed = n.state != Some(answer.state);
        if changed {
            n.state = Some(answer.state);
            n.refuses_new = None;
            n.accepted_new = false;
        }
        if answer.state != NodeState::Down {
            n.timeline = answer.timeline.or(n.timeline);
        }
        match answer.fresh {
            Some(Err(e)) => n.refuses_new = Some(e),
            Some(Ok(())) => {
                n.accepted_new = true;
                n.refuses_new = None;
            }
            None => {}
        }
        n.backoff
            .checked(answer.state == NodeState::Down, now, fast, interval);
        if changed {
            // Something changed, and the others may be part of it.
            for (id, other) in self.nodes.iter_mut().enumerate() {
                if id != node {
                    other.backoff.retry_now(now);
                }
            }
        }
        changed
    }
}
