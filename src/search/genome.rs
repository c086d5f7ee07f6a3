//! Genome encodings: the compact hex string used in the archive and checkpoints, and packed
//! prefixes used as cache keys.

use super::nsga2::Genome;

// Their home is `util`; kept here for the code that names them `search::genome::…`.
pub use crate::util::{fnv1a, Fnv};

/// Hex encoding of a genome: bits in genome order, 4 per hex digit, most significant bit
/// first, the last digit padded with zero bits. `"1"`-bits are *recompute*.
pub fn to_hex(g: &[bool]) -> String {
    g.chunks(4)
        .map(|c| {
            let mut v = 0u8;
            for (i, &b) in c.iter().enumerate() {
                if b {
                    v |= 8 >> i;
                }
            }
            char::from_digit(v as u32, 16).expect("nibble")
        })
        .collect()
}

/// Inverse of [`to_hex`] for a genome of `n` bits; `None` when malformed.
pub fn from_hex(s: &str, n: usize) -> Option<Genome> {
    if s.len() != n.div_ceil(4) {
        return None;
    }
    let mut g = Vec::with_capacity(n);
    for c in s.chars() {
        let v = c.to_digit(16)?;
        for i in 0..4 {
            if g.len() < n {
                g.push(v & (8 >> i) != 0);
            } else if v & (8 >> i) != 0 {
                return None; // padding bits must be zero
            }
        }
    }
    Some(g)
}

/// The genome as a `0`/`1` string (tests, messages).
pub fn to_bits(g: &[bool]) -> String {
    g.iter().map(|&b| if b { '1' } else { '0' }).collect()
}

/// The first `n` bits packed into 64-bit words (a hash-map key).
pub fn pack_prefix(g: &[bool], n: usize) -> Vec<u64> {
    g[..n]
        .chunks(64)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u64, |acc, (i, &b)| acc | ((b as u64) << i))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_layout() {
        let g: Vec<bool> = "10110".chars().map(|c| c == '1').collect();
        assert_eq!(to_hex(&g), "b0");
        assert_eq!(from_hex("b0", 5).unwrap(), g);
        assert!(from_hex("b4", 5).is_none(), "non-zero padding");
        assert_eq!(to_bits(&from_hex("b8", 5).unwrap()), "10111");
        assert!(from_hex("b", 5).is_none());
        assert!(from_hex("bg", 5).is_none());
        for n in [1usize, 4, 7, 64, 1680] {
            let g: Vec<bool> = (0..n).map(|i| (i * 7 + 3) % 5 < 2).collect();
            assert_eq!(from_hex(&to_hex(&g), n).unwrap(), g);
        }
    }

    #[test]
    fn packed_prefixes_distinguish_prefixes() {
        let a: Vec<bool> = (0..130).map(|i| i % 3 == 0).collect();
        let mut b = a.clone();
        b[129] = !b[129];
        assert_eq!(pack_prefix(&a, 129), pack_prefix(&b, 129));
        assert_ne!(pack_prefix(&a, 130), pack_prefix(&b, 130));
        assert_eq!(pack_prefix(&a, 130).len(), 3);
    }
}
