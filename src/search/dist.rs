//! One search over several processes (MPI ranks, see docs/SEARCH.md, "Many processes").
//!
//! Rank 0 runs the genetic algorithm and owns the checkpoint and every output; every rank
//! (rank 0 included) evaluates. The work is split by calibration samples: the calibration set
//! is cut into its `--batch-size` chunks exactly as in one process, and each rank holds a fixed,
//! contiguous block of chunks ([`Shard::chunks`]), walked through its own prefix trie and prefix
//! cache. Each chunk is the same transformer batch as in one process, so every per-sample value
//! is bit for bit the one a single process computes; rank 0 gathers the per-sample values and
//! averages them in sample order ([`Evaluator::combine`]), so the objectives, and with them
//! the whole search, do not depend on the number of ranks.
//!
//! A generation costs one broadcast (the candidates' genomes and ids) and one gather (per
//! candidate, 8 bytes per sample plus 8 for the seconds). The transport is the [`Comm`] trait:
//! [`Solo`] is the one-process case (nothing is sent, [`evaluate`] is
//! [`Evaluator::evaluate`]); the `mpi` feature's `MpiComm` (src/search/mpi.rs) is rsmpi.
//!
//! Every rank answers every command, even after a failure of its own (it then sends the error
//! instead of values), so a failing rank never leaves the others waiting in a collective: rank
//! 0 reports the first failure with the rank and the candidates, sends the stop, and the
//! checkpoint of the last finished generation stays as it was. A rank that dies (a signal,
//! an out-of-memory kill) is seen by the MPI launcher, which ends the job naming the rank.

pub use super::evaluate::Shard;
use super::evaluate::{cand_name, Evaluation, Evaluator, LocalEval, WorkReport};
use super::nsga2::Genome;
use super::{SResult, SearchError};
use crate::backend::Backend;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The transport between the ranks of one search. Collective calls: every rank makes the same
/// calls in the same order.
pub trait Comm: Send + Sync + std::fmt::Debug {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Rank 0's `buf` to every rank (replacing theirs).
    fn broadcast(&self, buf: &mut Vec<u8>);
    /// Every rank's `mine`, in rank order, at rank 0 (an empty list elsewhere).
    fn gather(&self, mine: &[u8]) -> Vec<Vec<u8>>;
}

/// One process: rank 0 of 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Comm for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn broadcast(&self, _buf: &mut Vec<u8>) {}
    fn gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        vec![mine.to_vec()]
    }
}

/// The ranks a search runs on (a shared [`Comm`]; [`Solo`] by default).
#[derive(Clone, Debug)]
pub struct Cluster(pub Arc<dyn Comm>, Arc<AtomicBool>);

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new(Arc::new(Solo))
    }
}

impl Cluster {
    pub fn new(comm: Arc<dyn Comm>) -> Self {
        Cluster(comm, Arc::new(AtomicBool::new(false)))
    }
    pub fn comm(&self) -> &dyn Comm {
        &*self.0
    }
    /// Whether the other ranks have left the search together with rank 0 (it sent the stop,
    /// or refused to start): then a failure of rank 0 needs no `MPI_Abort`.
    pub fn released(&self) -> bool {
        self.1.load(Ordering::SeqCst)
    }
    pub fn set_released(&self) {
        self.1.store(true, Ordering::SeqCst)
    }
    pub fn rank(&self) -> usize {
        self.0.rank()
    }
    pub fn size(&self) -> usize {
        self.0.size()
    }
    pub fn shard(&self) -> Shard {
        Shard {
            rank: self.rank(),
            size: self.size(),
        }
    }
}

/// Commands from rank 0 (one broadcast each).
#[derive(Clone, Debug, PartialEq)]
enum Cmd {
    Evaluate {
        sharing: bool,
        ids: Vec<u64>,
        genomes: Vec<Genome>,
    },
    ClearCache,
    Stop,
}

// A small explicit little-endian encoding: f64 values travel as their bits, so nothing is
// rounded on the way.
struct Wr(Vec<u8>);

impl Wr {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Rd<'a>(&'a [u8]);

fn short() -> SearchError {
    SearchError::Settings("a message between ranks is truncated (ranks out of step?)".into())
}

impl Rd<'_> {
    fn take(&mut self, n: usize) -> SResult<&[u8]> {
        if self.0.len() < n {
            return Err(short());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> SResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> SResult<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn f64(&mut self) -> SResult<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    /// A count of items of at least `item` bytes each, bounded by what is left.
    fn count(&mut self, item: usize) -> SResult<usize> {
        let n = self.u64()?;
        if n > (self.0.len() / item.max(1)) as u64 {
            return Err(short());
        }
        Ok(n as usize)
    }
    fn str(&mut self) -> SResult<String> {
        let n = self.count(1)?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

impl Cmd {
    fn encode(&self) -> Vec<u8> {
        let mut w = Wr(Vec::new());
        match self {
            Cmd::Evaluate {
                sharing,
                ids,
                genomes,
            } => {
                w.u8(1);
                w.u8(u8::from(*sharing));
                w.u64(ids.len() as u64);
                for (id, g) in ids.iter().zip(genomes) {
                    w.u64(*id);
                    w.u64(g.len() as u64);
                    w.0.extend(g.iter().map(|&b| u8::from(b)));
                }
            }
            Cmd::ClearCache => w.u8(2),
            Cmd::Stop => w.u8(3),
        }
        w.0
    }

    fn decode(b: &[u8]) -> SResult<Cmd> {
        let mut r = Rd(b);
        Ok(match r.u8()? {
            1 => {
                let sharing = r.u8()? != 0;
                let n = r.count(16)?;
                let mut ids = Vec::with_capacity(n);
                let mut genomes = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(r.u64()?);
                    let len = r.count(1)?;
                    genomes.push(r.take(len)?.iter().map(|&b| b != 0).collect());
                }
                Cmd::Evaluate {
                    sharing,
                    ids,
                    genomes,
                }
            }
            2 => Cmd::ClearCache,
            3 => Cmd::Stop,
            t => {
                return Err(SearchError::Settings(format!(
                    "unknown command {t} from rank 0 (ranks out of step?)"
                )))
            }
        })
    }
}

fn encode_reply(r: &Result<LocalEval, String>) -> Vec<u8> {
    let mut w = Wr(Vec::new());
    match r {
        Ok(p) => {
            w.u8(1);
            w.u64(p.first as u64);
            w.u64(p.per_sample.len() as u64);
            for (vals, secs) in p.per_sample.iter().zip(&p.seconds) {
                w.f64(*secs);
                w.u64(vals.len() as u64);
                for v in vals {
                    w.f64(*v);
                }
            }
            let k = &p.work;
            for v in [
                k.candidates as u64,
                k.naive_steps,
                k.computed_steps,
                k.cache_hits,
            ] {
                w.u64(v);
            }
            for v in [k.naive_macs, k.computed_macs, k.seconds] {
                w.f64(v);
            }
        }
        Err(msg) => {
            w.u8(0);
            w.str(msg);
        }
    }
    w.0
}

fn decode_reply(b: &[u8]) -> SResult<Result<LocalEval, String>> {
    let mut r = Rd(b);
    if r.u8()? == 0 {
        return Ok(Err(r.str()?));
    }
    let first = r.u64()? as usize;
    let n = r.count(16)?;
    let mut per_sample = Vec::with_capacity(n);
    let mut seconds = Vec::with_capacity(n);
    for _ in 0..n {
        seconds.push(r.f64()?);
        let m = r.count(8)?;
        per_sample.push((0..m).map(|_| r.f64()).collect::<SResult<Vec<_>>>()?);
    }
    let mut work = WorkReport {
        candidates: r.u64()? as usize,
        naive_steps: r.u64()?,
        computed_steps: r.u64()?,
        cache_hits: r.u64()?,
        ..Default::default()
    };
    work.naive_macs = r.f64()?;
    work.computed_macs = r.f64()?;
    work.seconds = r.f64()?;
    Ok(Ok(LocalEval {
        first,
        per_sample,
        seconds,
        work,
    }))
}

/// `cand_00012` or `cand_00012..cand_00040`.
pub fn cand_range(ids: &[u64]) -> String {
    match (ids.iter().min(), ids.iter().max()) {
        (Some(a), Some(b)) if a == b => cand_name(*a),
        (Some(a), Some(b)) => format!("{}..{}", cand_name(*a), cand_name(*b)),
        _ => "no candidate".into(),
    }
}

/// [`Evaluator::evaluate`] over every rank (called by rank 0; the others are in [`serve`]).
pub fn evaluate<B: Backend>(
    comm: &dyn Comm,
    ev: &mut Evaluator<'_, B>,
    genomes: &[Genome],
    ids: &[u64],
    sharing: bool,
    tick: &mut (dyn FnMut() + Send),
) -> SResult<(Vec<Evaluation>, WorkReport)> {
    if comm.size() == 1 {
        return ev.evaluate(genomes, ids, sharing, tick);
    }
    let mut cmd = Cmd::Evaluate {
        sharing,
        ids: ids.to_vec(),
        genomes: genomes.to_vec(),
    }
    .encode();
    comm.broadcast(&mut cmd);
    let own = ev.evaluate_local(genomes, ids, sharing, tick);
    // Rank 0 answers like the others, so that its own error leaves nobody waiting.
    let own_msg = own.as_ref().map_err(|e| e.to_string()).cloned();
    let replies = comm.gather(&encode_reply(&own_msg));
    let own = own?;
    let mut parts = vec![own];
    for (rank, b) in replies.iter().enumerate().skip(1) {
        match decode_reply(b)? {
            Ok(p) => parts.push(p),
            Err(msg) => {
                return Err(SearchError::Rank {
                    rank,
                    candidates: cand_range(ids),
                    msg,
                })
            }
        }
    }
    let evals = ev.combine(genomes, &parts)?;
    // The work of every rank; its wall time is the slowest rank's.
    let mut work = WorkReport {
        candidates: parts[0].work.candidates,
        ..Default::default()
    };
    for p in &parts {
        let secs = work.seconds.max(p.work.seconds);
        let cands = work.candidates;
        work.add(&p.work);
        work.seconds = secs;
        work.candidates = cands;
    }
    Ok((evals, work))
}

/// Empties every rank's prefix cache (rank 0).
pub fn clear_cache<B: Backend>(comm: &dyn Comm, ev: &mut Evaluator<'_, B>) {
    if comm.size() > 1 {
        comm.broadcast(&mut Cmd::ClearCache.encode());
    }
    ev.clear_cache();
}

/// Releases the other ranks from [`serve`] (rank 0, once, at the end, success or not).
pub fn stop(comm: &dyn Comm) {
    if comm.size() > 1 {
        comm.broadcast(&mut Cmd::Stop.encode());
    }
}

/// A rank other than 0: evaluates what rank 0 sends until it sends the stop.
pub fn serve<B: Backend>(comm: &dyn Comm, ev: &mut Evaluator<'_, B>) -> SResult<()> {
    let fault = Fault::from_env(comm.rank());
    let mut answered = 0usize;
    loop {
        let mut buf = Vec::new();
        comm.broadcast(&mut buf);
        match Cmd::decode(&buf)? {
            Cmd::Evaluate {
                sharing,
                ids,
                genomes,
            } => {
                let r = match fault {
                    Some(f) if answered >= f.after => f.strike(comm.rank(), &ids),
                    _ => ev
                        .evaluate_local(&genomes, &ids, sharing, &mut || {})
                        .map_err(|e| e.to_string()),
                };
                answered += 1;
                comm.gather(&encode_reply(&r));
            }
            Cmd::ClearCache => ev.clear_cache(),
            Cmd::Stop => return Ok(()),
        }
    }
}

/// A fault injected into one rank for the tests of tests/mpi.rs (environment variables that
/// only a rank other than 0 of a multi-rank search reads): `ECAD_TEST_KILL_RANK=r` makes rank
/// `r` fail on the evaluation after the first `ECAD_TEST_KILL_AFTER_EVALS` (default 0) it
/// answered; `ECAD_TEST_KILL_MODE` says how: `kill` (default: the rank sends itself SIGKILL, as
/// an out-of-memory kill would), `abort` (SIGABRT, as a crash would) or `error` (the evaluation
/// fails and the rank reports it through the protocol).
#[derive(Clone, Copy, Debug)]
struct Fault {
    after: usize,
    mode: FaultMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultMode {
    Kill,
    Abort,
    Error,
}

impl Fault {
    fn from_env(rank: usize) -> Option<Fault> {
        if !cfg!(feature = "mpi") {
            return None;
        }
        let var = |k: &str| std::env::var(k).ok();
        let target: usize = var("ECAD_TEST_KILL_RANK")?.trim().parse().ok()?;
        if target != rank {
            return None;
        }
        let after = var("ECAD_TEST_KILL_AFTER_EVALS")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mode = match var("ECAD_TEST_KILL_MODE").as_deref().map(str::trim) {
            Some("abort") => FaultMode::Abort,
            Some("error") => FaultMode::Error,
            _ => FaultMode::Kill,
        };
        Some(Fault { after, mode })
    }

    /// Fails as configured; returns only in the `error` mode.
    fn strike(self, rank: usize, ids: &[u64]) -> Result<LocalEval, String> {
        let what = format!("injected test fault on rank {rank} ({})", cand_range(ids));
        match self.mode {
            FaultMode::Error => Err(what),
            FaultMode::Abort => {
                eprintln!("{what}: abort");
                std::process::abort()
            }
            FaultMode::Kill => {
                eprintln!("{what}: SIGKILL");
                let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
                std::process::abort()
            }
        }
    }
}

/// A collective check that every rank is ready: each passes `Ok(fingerprint)` (what must be
/// equal across ranks: settings, build) or `Err(why it cannot go on)`. Rank 0 gets an error
/// naming the first rank that failed or differs; the other ranks then get
/// [`SearchError::StoppedByRank0`]. `what` names the stage in the message.
pub fn agree(comm: &dyn Comm, what: &str, local: Result<String, String>) -> SResult<()> {
    agree_with(comm, what, local, &|f, f0| {
        format!(
            "it runs a different build or different settings than rank 0 (fingerprint {f}, rank 0: {f0}); start every rank with the same binary and arguments"
        )
    })
}

/// [`agree`] with its own message for a rank whose fingerprint differs from rank 0's
/// (`differs(rank's, rank 0's)`).
pub fn agree_with(
    comm: &dyn Comm,
    what: &str,
    local: Result<String, String>,
    differs: &dyn Fn(&str, &str) -> String,
) -> SResult<()> {
    if comm.size() == 1 {
        return local.map(|_| ()).map_err(SearchError::Settings);
    }
    let mut w = Wr(Vec::new());
    match &local {
        Ok(f) => {
            w.u8(1);
            w.str(f);
        }
        Err(m) => {
            w.u8(0);
            w.str(m);
        }
    }
    let all = comm.gather(&w.0);
    let mut verdict: Option<SearchError> = None;
    if comm.rank() == 0 {
        let mut decoded = Vec::new();
        for b in &all {
            let mut r = Rd(b);
            let ok = r.u8()? != 0;
            let s = r.str()?;
            decoded.push(if ok { Ok(s) } else { Err(s) });
        }
        for (rank, d) in decoded.iter().enumerate() {
            match (d, &decoded[0]) {
                (Err(msg), _) => {
                    verdict = Some(if rank == 0 {
                        SearchError::Settings(msg.clone())
                    } else {
                        SearchError::Rank {
                            rank,
                            candidates: what.to_string(),
                            msg: msg.clone(),
                        }
                    });
                    break;
                }
                (Ok(f), Ok(f0)) if f != f0 => {
                    verdict = Some(SearchError::Rank {
                        rank,
                        candidates: what.to_string(),
                        msg: differs(f, f0),
                    });
                    break;
                }
                _ => {}
            }
        }
    }
    let mut v = vec![u8::from(verdict.is_some())];
    comm.broadcast(&mut v);
    match verdict {
        Some(e) => Err(e),
        None if v.first() == Some(&1) => Err(SearchError::StoppedByRank0),
        None => Ok(()),
    }
}

/// Per-sample values of every rank at rank 0, put in sample order: each rank passes its
/// samples' `first` index and values (together covering samples `0..n` once); rank 0 gets the
/// `n` values, the other ranks an empty list. A collective call (every rank makes it). The
/// values travel as their bits; nothing is summed here, so a mean over them is the one a
/// single process computes.
pub fn gather_samples(comm: &dyn Comm, first: usize, vals: &[f64], n: usize) -> SResult<Vec<f64>> {
    let mine = LocalEval {
        first,
        per_sample: vec![vals.to_vec()],
        seconds: vec![0.0],
        work: WorkReport::default(),
    };
    let all = comm.gather(&encode_reply(&Ok(mine)));
    if comm.rank() != 0 {
        return Ok(Vec::new());
    }
    let mut out = vec![f64::NAN; n];
    let mut covered = 0usize;
    for (rank, b) in all.iter().enumerate() {
        let p = decode_reply(b)?.map_err(|msg| SearchError::Rank {
            rank,
            candidates: "gathering scores".into(),
            msg,
        })?;
        let v = p.per_sample.first().map_or(&[][..], Vec::as_slice);
        let end = p
            .first
            .checked_add(v.len())
            .filter(|&e| e <= n)
            .ok_or_else(|| {
                SearchError::Settings(format!(
                    "rank {rank} sent values of samples {}..{} of {n}",
                    p.first,
                    p.first.saturating_add(v.len())
                ))
            })?;
        out[p.first..end].copy_from_slice(v);
        covered += v.len();
    }
    if covered != n {
        return Err(SearchError::Settings(format!(
            "the ranks sent values of {covered} of {n} samples"
        )));
    }
    Ok(out)
}

/// What must be equal on every rank: the settings' text, the backend, and the build (the
/// crate version and a digest of the running executable).
pub fn fingerprint(settings: &str, backend: &str) -> String {
    let mut h = crate::util::Fnv::default();
    h.update(settings.as_bytes());
    h.update(backend.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    if let Some(bytes) = std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::read(p).ok())
    {
        h.update(&bytes);
    }
    h.hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_chunk_once_in_order() {
        for n in 0..12 {
            for size in 1..7 {
                let mut next = 0;
                for rank in 0..size {
                    let r = Shard { rank, size }.chunks(n);
                    assert_eq!(r.start, next, "n {n} size {size} rank {rank}");
                    assert!(r.len() == n / size || r.len() == n / size + 1);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
        assert_eq!(Shard::single().chunks(5), 0..5);
        assert_eq!(Shard { rank: 1, size: 3 }.chunks(4), 2..3);
    }

    #[test]
    fn messages_round_trip_exactly() {
        let cmd = Cmd::Evaluate {
            sharing: true,
            ids: vec![3, 9],
            genomes: vec![vec![true, false, true], vec![false; 5]],
        };
        assert_eq!(Cmd::decode(&cmd.encode()).unwrap(), cmd);
        assert_eq!(Cmd::decode(&Cmd::Stop.encode()).unwrap(), Cmd::Stop);
        let p = LocalEval {
            first: 4,
            per_sample: vec![vec![0.1 + 0.2, f64::MIN_POSITIVE], vec![-0.0, 1e300]],
            seconds: vec![0.5, 1.0 / 3.0],
            work: WorkReport {
                candidates: 2,
                naive_steps: 7,
                computed_steps: 5,
                naive_macs: 1.5e12,
                computed_macs: 1e12,
                cache_hits: 1,
                seconds: 0.25,
                ..Default::default()
            },
        };
        let back = decode_reply(&encode_reply(&Ok(p.clone())))
            .unwrap()
            .unwrap();
        assert_eq!(back, p);
        assert_eq!(back.per_sample[1][0].to_bits(), (-0.0f64).to_bits());
        let e = decode_reply(&encode_reply(&Err("boom".into()))).unwrap();
        assert_eq!(e, Err("boom".to_string()));
        // truncated messages are errors, not panics
        let b = cmd.encode();
        for cut in 0..b.len() {
            assert!(Cmd::decode(&b[..cut]).is_err(), "cut {cut}");
        }
    }
}
