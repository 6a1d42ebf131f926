//! Latency samples and their summary (nearest-rank percentiles).

use serde_json::{Value, json};
use std::time::Duration;

/// p50, p99 and max of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Summary::of_ms(&mut ms)
    }

    /// Samples in milliseconds; sorts them in place.
    pub fn of_ms(ms: &mut [f64]) -> Summary {
        if ms.is_empty() {
            return Summary::default();
        }
        ms.sort_by(f64::total_cmp);
        Summary {
            count: ms.len(),
            p50: rank(ms, 0.50),
            p99: rank(ms, 0.99),
            max: ms[ms.len() - 1],
        }
    }

    /// `p50 1.2 ms, p99 3.4 ms, max 5.6 ms (n=100)`
    pub fn text(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {} ms, p99 {} ms, max {} ms (n={})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": round3(self.p50),
            "p99_ms": round3(self.p99),
            "max_ms": round3(self.max),
        })
    }
}

/// Nearest rank: the smallest sample with at least `p` of the samples at or below it.
fn rank(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let k = (p * n as f64).ceil() as usize;
    sorted[k.clamp(1, n) - 1]
}

/// Milliseconds with a precision that suits their size.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of_ms(&mut v);
        assert_eq!((s.p50, s.p99, s.max, s.count), (50.0, 99.0, 100.0, 100));
        let mut one = [7.0];
        let s = Summary::of_ms(&mut one);
        assert_eq!((s.p50, s.p99), (7.0, 7.0));
    }
}
