//! The cross-generation prefix cache: sampling states saved after step k, keyed by the
//! schedule bits of steps `0..k` (and the calibration chunk), evicted least-recently-used
//! under a byte budget.
//!
//! Memory is counted per distinct buffer: states share tensors (a reused cache slot is the
//! same buffer in the parent and the child state), so a buffer held by several saved states is
//! counted once, and freed from the count when the last state holding it is evicted.

use crate::backend::{Backend, Tensor};
use crate::pipeline::run::RunState;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A sampling state on a prefix path, with the measured time spent to reach it.
pub struct Node<B: Backend> {
    pub state: RunState<B>,
    /// Seconds of step computation along the path from the initial state.
    pub seconds: f64,
}

impl<B: Backend> Clone for Node<B> {
    fn clone(&self) -> Self {
        Node {
            state: self.state.clone(),
            seconds: self.seconds,
        }
    }
}

/// `(chunk, steps done, packed bits of those steps)`.
pub type PrefixKey = (usize, usize, Vec<u64>);

struct Entry<B: Backend> {
    node: Node<B>,
    last_use: u64,
}

/// Counters of the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    pub hits: u64,
    pub inserts: u64,
    pub evictions: u64,
}

pub struct PrefixCache<B: Backend> {
    budget: usize,
    entries: HashMap<PrefixKey, Entry<B>>,
    lru: BTreeMap<u64, PrefixKey>,
    tick: u64,
    buffers: HashMap<usize, (usize, usize)>,
    bytes: usize,
    pub stats: PrefixStats,
}

fn buffer_id<B: Backend>(t: &Tensor<B>) -> usize {
    Arc::as_ptr(t.buffer_arc()) as *const u8 as usize
}

impl<B: Backend> PrefixCache<B> {
    /// A cache holding at most `budget` bytes of distinct buffers (0 disables it).
    pub fn new(budget: usize) -> Self {
        PrefixCache {
            budget,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            buffers: HashMap::new(),
            bytes: 0,
            stats: PrefixStats::default(),
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn touch(&mut self, key: &PrefixKey) {
        self.tick += 1;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.last_use);
            e.last_use = self.tick;
            self.lru.insert(self.tick, key.clone());
        }
    }

    /// The saved state for `key`, if any (a cheap clone).
    pub fn get(&mut self, key: &PrefixKey) -> Option<Node<B>> {
        if !self.entries.contains_key(key) {
            return None;
        }
        self.touch(key);
        self.stats.hits += 1;
        self.entries.get(key).map(|e| e.node.clone())
    }

    /// Saves a state, then evicts least-recently-used states until the budget holds (the new
    /// state itself may be evicted when it alone exceeds the budget).
    pub fn insert(&mut self, key: PrefixKey, node: Node<B>) {
        if self.budget == 0 || self.entries.contains_key(&key) {
            return;
        }
        for t in node.state.tensors() {
            let e = self
                .buffers
                .entry(buffer_id(t))
                .or_insert((0, t.numel() * 4));
            if e.0 == 0 {
                self.bytes += e.1;
            }
            e.0 += 1;
        }
        self.tick += 1;
        self.lru.insert(self.tick, key.clone());
        self.entries.insert(
            key,
            Entry {
                node,
                last_use: self.tick,
            },
        );
        self.stats.inserts += 1;
        while self.bytes > self.budget {
            let Some((_, k)) = self.lru.pop_first() else {
                break;
            };
            self.remove(&k);
            self.stats.evictions += 1;
        }
    }

    fn remove(&mut self, key: &PrefixKey) {
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.lru.remove(&e.last_use);
        for t in e.node.state.tensors() {
            let id = buffer_id(t);
            if let Some(c) = self.buffers.get_mut(&id) {
                c.0 -= 1;
                if c.0 == 0 {
                    self.bytes -= c.1;
                    self.buffers.remove(&id);
                }
            }
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.lru.clear();
        self.buffers.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::pipeline::denoise::{DenoiseReport, DenoiseState};
    use crate::sampler::{DpmSolverConfig, DpmSolverMultistep};

    fn node(be: &CpuBackend, latents: &Tensor<CpuBackend>) -> Node<CpuBackend> {
        let _ = be;
        Node {
            state: RunState::PixArt(DenoiseState {
                latents: latents.clone(),
                sampler: DpmSolverMultistep::new(DpmSolverConfig::default(), 4),
                cache: None,
                report: DenoiseReport::default(),
            }),
            seconds: 0.0,
        }
    }

    #[test]
    fn shared_buffers_count_once_and_lru_evicts() {
        let be = CpuBackend::new();
        let a = be.upload(vec![0.0; 100], &[100]).unwrap(); // 400 bytes
        let b = be.upload(vec![0.0; 50], &[50]).unwrap(); // 200 bytes
        let mut c = PrefixCache::new(1000);
        c.insert((0, 1, vec![1]), node(&be, &a));
        c.insert((0, 2, vec![1]), node(&be, &a)); // same buffer: still 400
        assert_eq!(c.bytes(), 400);
        c.insert((0, 1, vec![2]), node(&be, &b));
        assert_eq!(c.bytes(), 600);
        assert_eq!(c.len(), 3);
        // touch the first; a 500-byte state then evicts the least recently used ones
        assert!(c.get(&(0, 1, vec![1])).is_some());
        let d = be.upload(vec![0.0; 125], &[125]).unwrap();
        c.insert((0, 3, vec![1]), node(&be, &d));
        // LRU order: (0,2) [a, still held by (0,1)], then (0,1,[2]) [b] → 400 + 500 = 900
        assert!(c.get(&(0, 2, vec![1])).is_none());
        assert!(c.get(&(0, 1, vec![2])).is_none());
        assert!(c.get(&(0, 1, vec![1])).is_some());
        assert_eq!(c.bytes(), 900);
        assert_eq!(c.stats.evictions, 2);
        // a state larger than the whole budget does not stay
        let e = be.upload(vec![0.0; 1000], &[1000]).unwrap();
        c.insert((0, 4, vec![1]), node(&be, &e));
        assert!(c.bytes() <= 1000);
        // budget 0: nothing is kept
        let mut z = PrefixCache::new(0);
        z.insert((0, 1, vec![1]), node(&be, &a));
        assert!(z.is_empty() && z.bytes() == 0);
    }
}
