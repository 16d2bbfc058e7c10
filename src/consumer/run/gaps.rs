//! Deliveries that never arrived: a gap in the consumer sequences of what a worker receives.
//!
//! The broker numbers every delivery of a consumer (its consumer sequence, redeliveries
//! included). One worker pulls from a consumer at a time (the lease), so it receives them in
//! turn; a number missing means the broker delivered a message the worker never got: a pull
//! answered while it expired on the worker's side, a reply lost as a node died. The broker
//! delivers that message again only after `ack_wait`, while it goes on delivering newer ones at
//! once, so its order's later events would be handled first. A worker that sees a gap therefore
//! looks, as at start (see `held`), for what is delivered and unacknowledged and not in its
//! hands, and makes those messages' keys wait for them.
//!
//! Numbers lower than the last one seen are parked messages, delivered before. When the worker
//! resets its consumer (see `rewind`) the numbering starts again from 1 and so does the count; a
//! consumer made again by someone else numbers below the last one seen until it passes it, and
//! the first number past it may then look like a gap: a needless look at what is unacknowledged,
//! nothing worse.

/// The consumer sequences a worker has received, as far as a gap can be told from them.
#[derive(Debug, Default)]
pub(in crate::consumer) struct Deliveries {
    last: Option<u64>,
}

impl Deliveries {
    /// Notes the consumer sequences of messages just received (parked ones among them, whose
    /// numbers are old); true when a number between the last one seen and the highest of these
    /// is missing.
    pub(in crate::consumer) fn missed(&mut self, received: impl IntoIterator<Item = u64>) -> bool {
        let mut new: Vec<u64> = received.into_iter().collect();
        new.sort_unstable();
        new.dedup();
        let Some(&highest) = new.last() else {
            return false;
        };
        let Some(last) = self.last else {
            self.last = Some(highest);
            return false;
        };
        let fresh: Vec<u64> = new.into_iter().filter(|&s| s > last).collect();
        if fresh.is_empty() {
            // Parked messages, delivered before.
            return false;
        }
        let mut expected = last + 1;
        let mut gap = false;
        for s in fresh {
            gap |= s > expected;
            expected = s + 1;
        }
        self.last = Some(highest);
        gap
    }

    /// Forgets the numbering: the consumer was reset and counts from 1 again.
    pub(in crate::consumer) fn forget(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_turn_are_no_gap_and_a_missing_one_is() {
        let mut d = Deliveries::default();
        assert!(!d.missed([5]), "the first batch sets the count");
        assert!(!d.missed([6, 7, 8]));
        assert!(!d.missed([10, 9]), "in any order within a batch");
        assert!(d.missed([12]), "11 never arrived");
        assert!(!d.missed([13]));
        assert!(d.missed([14, 16]), "15 never arrived");
    }

    #[test]
    fn parked_messages_and_nothing_new_are_no_gap() {
        let mut d = Deliveries::default();
        assert!(!d.missed([1, 2, 3]));
        assert!(!d.missed([2]), "parked, delivered before");
        assert!(!d.missed([]));
        assert!(!d.missed([2, 4]), "a parked one with the next one");
    }

    #[test]
    fn after_a_reset_the_count_starts_again() {
        let mut d = Deliveries::default();
        assert!(!d.missed([40, 41]));
        d.forget();
        assert!(!d.missed([1]));
        assert!(!d.missed([2, 3]));
        assert!(d.missed([5]));
    }
}
