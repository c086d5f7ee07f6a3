//! The search's one source of randomness: a seeded ChaCha8 stream with a serialisable position.
//!
//! Every random decision of the GA draws from one [`SearchRng`]. The primitives are implemented
//! here, on raw 64-bit words, instead of through `rand`'s distributions, so that a seed keeps
//! giving the same search whatever `rand` version is linked:
//!
//! - [`SearchRng::uniform`]: `(next_u64 >> 11) · 2⁻⁵³`, uniform in `[0, 1)`;
//! - [`SearchRng::below`]: Lemire's unbiased multiply-and-reject, uniform in `0..n`;
//! - [`SearchRng::permutation`]: Fisher–Yates (from the last position down), uniform;
//! - [`SearchRng::coin`]: `below(2) == 1`.
//!
//! The state is `(seed, stream, word position)`; ChaCha's output is a stream of 32-bit words
//! (a `u64` is two consecutive words), so restoring the word position continues the stream
//! exactly where it was saved.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The seeded generator.
#[derive(Clone, Debug)]
pub struct SearchRng {
    rng: ChaCha8Rng,
}

/// A serialisable snapshot of a [`SearchRng`] (hex seed, stream, word position as a decimal
/// string because it is a `u128`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: String,
    pub stream: u64,
    pub word_pos: String,
}

impl SearchRng {
    /// `ChaCha8Rng::seed_from_u64(seed)`.
    pub fn new(seed: u64) -> Self {
        SearchRng {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`), unbiased (Lemire 2019).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.below(2) == 1
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            p.swap(i, j);
        }
        p
    }

    pub fn state(&self) -> RngState {
        let seed = self.rng.get_seed();
        RngState {
            seed: seed.iter().map(|b| format!("{b:02x}")).collect(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos().to_string(),
        }
    }

    /// Restores a snapshot; `None` when it is malformed.
    pub fn from_state(s: &RngState) -> Option<Self> {
        if s.seed.len() != 64 || !s.seed.is_ascii() {
            return None;
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s.seed[2 * i..2 * i + 2], 16).ok()?;
        }
        let pos: u128 = s.word_pos.parse().ok()?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(s.stream);
        rng.set_word_pos(pos);
        Some(SearchRng { rng })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_restores_the_stream_exactly_at_any_position() {
        for skip in [0usize, 1, 3, 31, 32, 33, 63, 64, 100] {
            let mut a = SearchRng::new(42);
            for _ in 0..skip {
                // odd word counts too: a u32 draw leaves the position mid-u64
                a.rng.next_u32();
            }
            let st = a.state();
            let mut b = SearchRng::from_state(&st).unwrap();
            let xa: Vec<u64> = (0..50).map(|_| a.next_u64()).collect();
            let xb: Vec<u64> = (0..50).map(|_| b.next_u64()).collect();
            assert_eq!(xa, xb, "skip {skip}");
        }
    }

    #[test]
    fn primitives_are_in_range_and_permutations_are_permutations() {
        let mut r = SearchRng::new(7);
        for _ in 0..1000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(5) < 5);
        }
        let mut p = r.permutation(17);
        p.sort();
        assert_eq!(p, (0..17).collect::<Vec<_>>());
        // roughly uniform
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[r.below(3)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (900..1100).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn malformed_states_are_rejected() {
        let mut s = SearchRng::new(1).state();
        s.seed.pop();
        assert!(SearchRng::from_state(&s).is_none());
        let mut s = SearchRng::new(1).state();
        s.word_pos = "x".into();
        assert!(SearchRng::from_state(&s).is_none());
    }
}
