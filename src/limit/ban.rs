//! The penalty box: a key a limit keeps refusing is refused outright for a
//! while, longer on each repeat offence. Plain state and functions of `now`,
//! like the algorithms; the memory store keeps the records in a table of
//! their own and the Redis script mirrors these rules (`decide.lua`).
//!
//! A record counts a key's refusals in a window of `within` that opens at
//! its first refusal. The `after`-th refusal in the window starts a ban of
//! `for × escalate^(offences − 1)`, at most `max`. A key's offences are
//! remembered until `max` after its last ban ends, so a client that comes
//! back to the same behaviour soon after is banned longer.

use super::Nanos;

/// A limit's `ban:` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BanPolicy {
    /// Refusals within `within` that start a ban (at least 1).
    pub after: u32,
    pub within: Nanos,
    /// The first ban's length.
    pub duration: Nanos,
    /// Each repeat offence multiplies the length by this (1: never longer).
    pub escalate: u32,
    /// The longest ban, and how long offences are remembered after one.
    pub max: Nanos,
    /// A shadow ban is recorded and counted but never refuses.
    pub enforced: bool,
}

impl BanPolicy {
    /// The length of a key's `offence`-th ban (counting from 1).
    pub(crate) fn length(&self, offence: u32) -> Nanos {
        let mut length = self.duration.min(self.max);
        for _ in 1..offence {
            if length >= self.max {
                break;
            }
            length = length
                .saturating_mul(u64::from(self.escalate))
                .min(self.max);
        }
        length
    }
}

/// What a key's ban record says about one request of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BanMark {
    /// No ban involved.
    #[default]
    None,
    /// The key is banned: refused without asking the limit (for a shadow
    /// ban: would have been).
    Banned,
    /// This refusal started a ban (or, in shadow, would have).
    Started,
}

/// One key's refusals and bans under one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BanRecord {
    /// Refusals in the current window.
    pub strikes: u32,
    /// When the current window opened.
    pub since: Nanos,
    /// Bans so far (remembered until `max` after the last one ends).
    pub offences: u32,
    /// When the current (or last) ban ends; 0 before the first.
    pub until: Nanos,
}

impl BanRecord {
    /// How much longer the key is banned at `now`, if it is.
    pub fn banned_for(&self, now: Nanos) -> Option<Nanos> {
        (self.until > now).then(|| self.until - now)
    }

    /// Counts a refusal at `now`; returns the length of the ban it starts.
    pub fn strike(&mut self, policy: &BanPolicy, now: Nanos) -> Option<Nanos> {
        if self.until > 0 && now >= self.until.saturating_add(policy.max) {
            self.offences = 0;
        }
        if self.strikes == 0 || now.saturating_sub(self.since) >= policy.within {
            self.strikes = 0;
            self.since = now;
        }
        self.strikes += 1;
        if self.strikes < policy.after.max(1) {
            return None;
        }
        self.offences += 1;
        self.strikes = 0;
        let length = policy.length(self.offences);
        self.until = now.saturating_add(length);
        Some(length)
    }

    /// When the record no longer matters: its window has closed and its
    /// offences are forgotten.
    pub fn expires_at(&self, policy: &BanPolicy) -> Nanos {
        let window = self.since.saturating_add(policy.within);
        let offences = if self.offences > 0 {
            self.until.saturating_add(policy.max)
        } else {
            0
        };
        window.max(offences)
    }
}

/// A policy for unit tests: 3 refusals within a minute ban for 10 minutes,
/// doubling per repeat offence up to an hour.
#[cfg(test)]
pub(crate) fn example_policy() -> BanPolicy {
    const SECOND: Nanos = 1_000_000_000;
    BanPolicy {
        after: 3,
        within: 60 * SECOND,
        duration: 600 * SECOND,
        escalate: 2,
        max: 3_600 * SECOND,
        enforced: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    fn policy() -> BanPolicy {
        example_policy()
    }

    #[test]
    fn the_after_th_refusal_within_the_window_starts_a_ban() {
        let mut record = BanRecord::default();
        assert_eq!(record.strike(&policy(), SECOND), None);
        assert_eq!(record.strike(&policy(), 2 * SECOND), None);
        assert_eq!(record.strike(&policy(), 3 * SECOND), Some(600 * SECOND));
        assert_eq!(record.banned_for(4 * SECOND), Some(599 * SECOND));
    }

    #[test]
    fn refusals_spread_wider_than_the_window_start_no_ban() {
        let mut record = BanRecord::default();
        for t in [0, 40, 80, 120, 160] {
            assert_eq!(record.strike(&policy(), 1 + t * SECOND), None, "at {t}s");
        }
    }

    #[test]
    fn a_repeat_offence_is_banned_longer_up_to_max() {
        let mut record = BanRecord::default();
        let mut now = SECOND;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let mut started = None;
            while started.is_none() {
                started = record.strike(&policy(), now);
                now += SECOND;
            }
            lengths.push(started.unwrap() / SECOND);
            now = record.until + SECOND;
        }
        assert_eq!(lengths, [600, 1_200, 2_400, 3_600]);
    }

    #[test]
    fn offences_are_forgotten_max_after_the_last_ban() {
        let mut record = BanRecord::default();
        for t in 1..=3 {
            record.strike(&policy(), t * SECOND);
        }
        let later = record.until + 3_600 * SECOND;
        for t in 0..3 {
            record.strike(&policy(), later + t * SECOND);
        }
        assert_eq!(record.offences, 1);
        assert_eq!(record.banned_for(later + 3 * SECOND), Some(599 * SECOND));
    }

    #[test]
    fn a_huge_escalation_saturates_at_max() {
        let policy = BanPolicy {
            escalate: u32::MAX,
            ..policy()
        };
        assert_eq!(policy.length(40), 3_600 * SECOND);
    }
}
