//! Sans-IO guards: the token bucket. Time comes in as an argument.

/// A token bucket: `rate` tokens per second up to `burst`; starts full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ms`.
    pub fn full(burst: f64, now_ms: u64) -> TokenBucket {
        TokenBucket { tokens: burst, last_ms: now_ms }
    }

    /// Takes one token at `now_ms`, or returns how many milliseconds until one is available.
    pub fn take(&mut self, rate_per_sec: f64, burst: f64, now_ms: u64) -> Result<(), u64> {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed_ms as f64 * rate_per_sec / 1000.0).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate_per_sec <= 0.0 {
            Err(u64::MAX)
        } else {
            Err(((1.0 - self.tokens) * 1000.0 / rate_per_sec).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::full(5.0, 0);
        for _ in 0..5 {
            b.take(10.0, 5.0, 0).unwrap();
        }
        assert_eq!(b.take(10.0, 5.0, 0), Err(100));
        // 10/s: one token after 100 ms.
        b.take(10.0, 5.0, 100).unwrap();
        assert!(b.take(10.0, 5.0, 100).is_err());
        // Never more than the burst, however long the pause.
        let mut n = 0;
        while b.take(10.0, 5.0, 1_000_000).is_ok() {
            n += 1;
        }
        assert_eq!(n, 5);
        // Time going backwards never adds tokens.
        assert!(b.take(10.0, 5.0, 10).is_err());
    }
}
