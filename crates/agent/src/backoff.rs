//! Reconnect pauses: exponential backoff with full jitter.
//!
//! Invariants:
//! - The n-th pause after a success is uniformly drawn from `[0, min(FIRST * 2^n, CAP)]`:
//!   never longer than [`CAP`], so a restarted controller sees the agent back within
//!   about `CAP` plus one connect attempt.
//! - [`Backoff::reset`] (after a `Welcome`) starts again at [`FIRST`].
//! - The jitter source is a xorshift64 seeded from the OS (or the clock when the OS has no
//!   randomness to give): agents that lost the same controller do not retry in lockstep.

use std::time::Duration;

/// Ceiling of the first pause.
pub const FIRST: Duration = Duration::from_millis(250);
/// Largest pause.
pub const CAP: Duration = Duration::from_secs(3);

/// Pauses between connect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
    rng: XorShift,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff {
            ceiling: FIRST,
            rng: XorShift::from_os(),
        }
    }

    /// The next pause; the ceiling doubles up to [`CAP`].
    pub fn next_pause(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(CAP);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.below_or_equal(nanos))
    }

    /// After a successful connection: the next pause is short again.
    pub fn reset(&mut self) {
        self.ceiling = FIRST;
    }
}

/// A tiny xorshift64 generator; jitter needs spread, not cryptographic quality.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn from_os() -> XorShift {
        let seed = getrandom::u64().unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
                .unwrap_or(0x9e37_79b9_7f4a_7c15)
        });
        XorShift::new(seed)
    }

    fn new(seed: u64) -> XorShift {
        // Zero is the one state xorshift never leaves.
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..=max` (modulo bias is irrelevant for jitter).
    fn below_or_equal(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next() % n,
            None => self.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_stay_within_the_growing_ceiling_and_the_cap() {
        for seed in [1, 2, 42, u64::MAX, 0] {
            let mut b = Backoff {
                ceiling: FIRST,
                rng: XorShift::new(seed),
            };
            let mut ceiling = FIRST;
            for _ in 0..200 {
                let pause = b.next_pause();
                assert!(pause <= ceiling, "{pause:?} > {ceiling:?}");
                assert!(pause <= CAP);
                ceiling = (ceiling * 2).min(CAP);
            }
            b.reset();
            assert!(b.next_pause() <= FIRST);
        }
    }

    #[test]
    fn pauses_are_spread_out() {
        let mut b = Backoff::new();
        for _ in 0..10 {
            b.next_pause();
        }
        let pauses: Vec<Duration> = (0..100).map(|_| b.next_pause()).collect();
        let low = pauses.iter().filter(|p| **p < CAP / 2).count();
        assert!(
            (10..=90).contains(&low),
            "{low} of 100 pauses below half the cap"
        );
        assert!(pauses.iter().any(|p| *p != pauses[0]));
    }

    #[test]
    fn the_ceiling_reaches_the_cap_within_a_few_attempts() {
        let mut b = Backoff::new();
        for _ in 0..4 {
            b.next_pause();
        }
        assert_eq!(b.ceiling, CAP);
    }
}
