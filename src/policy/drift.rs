//! When PgBouncer's routes are compared with the active node's file. The symlink is read
//! at every round (cheap); the routes take an admin query and a file read, so they are
//! compared every few rounds, and at once when something suggests they changed.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
