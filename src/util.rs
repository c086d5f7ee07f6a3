//! Generic helpers at the bottom of the layer stack (every other module may use them; they use
//! no other module of this crate): seeded normal samples, the relative L2 error, FNV-1a
//! fingerprints, the cache folder, atomic file writes, and the bounds on numbers that size
//! memory ([`limits`], [`checked_numel`], [`checked_bytes`]).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Standard normal samples from a seeded ChaCha8 stream (Box–Muller), reproducible everywhere.
pub fn randn(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push((r * th.cos()) as f32);
        out.push((r * th.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Relative L2 error `‖a − b‖₂ / ‖b‖₂`, computed in f64.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let mut num = 0f64;
    let mut den = 0f64;
    for (x, y) in a.iter().zip(b) {
        num += ((*x as f64) - (*y as f64)).powi(2);
        den += (*y as f64).powi(2);
    }
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// 64-bit FNV-1a (fingerprints of settings, inputs and checkpoints; not cryptographic).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Incremental FNV-1a.
#[derive(Clone, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The cache folder: `$ECAD_NATIVE_CACHE`, else `$XDG_CACHE_HOME/ecad-native`, else
/// `~/.cache/ecad-native`; None when none can be determined.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ECAD_NATIVE_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("ecad-native"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("ecad-native"))
}

/// A failed [`atomic_write`]: the path the caller asked for, and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` so that readers see the old file or the whole new one, never a
/// part: the bytes go to a temporary file in the destination folder (named uniquely per call:
/// process id, a per-process counter and the clock), which is flushed to disk, renamed over
/// `path`, and the folder is flushed too so that the rename survives a crash. On any error the
/// temporary file is removed and the error names `path`.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{name}.tmp{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    sync_dir(dir).map_err(err)
}

/// Removes the temporary files that [`atomic_write`] calls killed mid-write left in `dir`
/// (`.NAME.tmpPID-N-NANOS`), when their process is gone; returns how many. A killed writer
/// cannot remove its own temporary file, so whoever owns the folder next (a resumed search)
/// cleans up. The files of a live process are left alone, so a concurrent writer is safe.
/// Where process ids cannot be checked (no `/proc`), nothing is removed.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = temporary_writer_pid(&name) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The writer's process id, when `name` is an [`atomic_write`] temporary file.
fn temporary_writer_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(".tmp")?;
    let mut parts = rest[at + 4..].split('-');
    let pid = parts.next()?.parse().ok()?;
    let counter_and_nanos = (parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(counter_and_nanos.0) && digits(counter_and_nanos.1) && parts.next().is_none())
        .then_some(pid)
}

/// Flushes a folder's entries (a rename in it) to disk. Folders cannot be opened as files on
/// every platform; where they cannot, there is nothing to flush this way.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The first `max_chars` characters of `text`, with `…` when it was longer: what messages and
/// warnings quote of user text (a prompt can be 100 kB).
pub fn quote_start(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// The element count of `shape`, `None` when the product overflows `usize`.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// The byte length of a tensor of `shape` with `elem_size`-byte elements, `None` when the
/// product overflows `usize` or exceeds `isize::MAX` (the most any Rust allocation may hold).
pub fn checked_bytes(shape: &[usize], elem_size: usize) -> Option<usize> {
    checked_numel(shape)?
        .checked_mul(elem_size)
        .filter(|&b| b <= isize::MAX as usize)
}

/// The documented limits on numbers that size memory: step counts, block and layer counts,
/// image sides, heads, dims, vocabularies and text lengths. Every front door (config.json,
/// schedule JSON, heuristic specs, tokenizer configs, CLI flags, the C ABI) checks the numbers
/// it is given against these before anything is allocated from them, so that a hostile or
/// mistyped number is refused with an error instead of aborting the host on an allocation
/// failure. The limits are far above every shipped model (docs/RELIABILITY.md, "Limits").
pub mod limits {
    /// One limit: the largest value accepted, and why.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Limit {
        /// What it bounds, for messages (`inference steps`).
        pub name: &'static str,
        /// The largest accepted value (inclusive).
        pub max: u64,
        /// Why the limit is what it is (shown in the error).
        pub why: &'static str,
    }

    /// A number over its limit: `what` names the field and where it came from.
    #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
    #[error("{what} is {value}, more than the limit of {max} {name} ({why})")]
    pub struct OverLimit {
        /// The field and its source, e.g. ``num_layers` in transformer/config.json`.
        pub what: String,
        /// The value given.
        pub value: u128,
        /// The limit.
        pub max: u64,
        /// The limit's name.
        pub name: &'static str,
        /// Why.
        pub why: &'static str,
    }

    impl Limit {
        /// `value` as a `usize` when it is within the limit, else an [`OverLimit`] naming
        /// `what`.
        pub fn check(
            &self,
            what: impl Into<String>,
            value: impl Into<u128>,
        ) -> Result<usize, OverLimit> {
            let value = value.into();
            if value <= self.max as u128 {
                if let Ok(v) = usize::try_from(value) {
                    return Ok(v);
                }
            }
            Err(OverLimit {
                what: what.into(),
                value,
                max: self.max,
                name: self.name,
                why: self.why,
            })
        }
    }

    /// Inference steps per run (and per schedule): diffusers refuses more inference steps than
    /// the scheduler's `num_train_timesteps`, which is 1000 for PixArt's DPM-Solver++ and
    /// FLUX's FlowMatch Euler.
    pub const STEPS: Limit = Limit {
        name: "inference steps",
        max: 1000,
        why: "diffusers refuses more steps than the scheduler's 1000 training timesteps",
    };

    /// Transformer blocks in a schedule (double + single blocks) and layers in any config
    /// (`num_layers`, `num_hidden_layers`, `layers_per_block`, ...): the largest shipped model
    /// (FLUX.1: 19 + 38 blocks) has 57; 512 leaves ample room for deeper models.
    pub const LAYERS: Limit = Limit {
        name: "layers/blocks",
        max: 512,
        why: "the deepest supported model (FLUX.1) has 57 blocks",
    };

    /// Attention heads in any config: FLUX.1 has 24, PixArt 16, T5-XXL 64.
    pub const HEADS: Limit = Limit {
        name: "attention heads",
        max: 1024,
        why: "the supported models use at most 64",
    };

    /// Any width in a config (hidden sizes, head dims, feed-forward sizes, channels, buckets,
    /// timestep tables): T5-XXL's d_ff is 10240, FLUX's joint_attention_dim 4096; 65536 is
    /// T5-11B's d_ff, the widest such layer published.
    pub const DIM: Limit = Limit {
        name: "for widths",
        max: 65536,
        why: "the widest published T5 layer (T5-11B d_ff) is 65536",
    };

    /// Vocabulary sizes and token ids (config `vocab_size`, `*_token_id`, tokenizer
    /// `extra_ids`): T5 has 32128 tokens, CLIP 49408; 2^20 is four times the largest
    /// multilingual vocabularies (256k).
    pub const VOCAB: Limit = Limit {
        name: "tokens in a vocabulary",
        max: 1 << 20,
        why: "the largest tokenizer vocabularies have about 256k entries",
    };

    /// Text tokens (`max_position_embeddings`, tokenizer `model_max_length`, prompt lengths):
    /// CLIP uses 77, PixArt's T5 120 or 300, FLUX's T5 512.
    pub const TEXT_TOKENS: Limit = Limit {
        name: "text tokens",
        max: 4096,
        why: "the supported text encoders use at most 512",
    };

    /// Image width and height in pixels: 8192 is 8× FLUX's and PixArt's largest trained
    /// resolution (1024), a latent side of 1024 (VAE factor 8) whose token count (PixArt:
    /// (1024/2)², 262144) already needs attention buffers far beyond any device.
    pub const IMAGE_SIDE: Limit = Limit {
        name: "pixels per side",
        max: 8192,
        why: "8x the largest trained resolution (1024 px)",
    };

    /// Latent height and width (`sample_size`, PixArt's `--latent`): [`IMAGE_SIDE`] over the
    /// VAE's factor 8.
    pub const LATENT_SIDE: Limit = Limit {
        name: "latent pixels per side",
        max: 8192 / 8,
        why: "the image side limit of 8192 px over the VAE's factor 8",
    };

    /// Search populations (`search --population`): ECAD's searches use about 100 candidates
    /// per generation; each candidate holds a genome and its evaluated outputs.
    pub const POPULATION: Limit = Limit {
        name: "candidates per generation",
        max: 10_000,
        why: "ECAD's searches use populations of about 100",
    };

    /// Timed repetitions and warm-up runs of `bench` (`--reps`, `--warmup`): a median is stable
    /// after a few dozen runs; the limit stops a mistyped count from running for days and from
    /// growing the timing list without bound.
    pub const REPS: Limit = Limit {
        name: "repetitions",
        max: 10_000,
        why: "a median is stable after a few dozen runs",
    };

    /// Generations of a search (`search --generations`): ECAD's searches run 200 to 500; every
    /// generation adds a population of entries to the archive kept in memory and checkpoints.
    pub const GENERATIONS: Limit = Limit {
        name: "generations",
        max: 100_000,
        why: "ECAD's searches run a few hundred; each one grows the archive",
    };

    /// Batch sizes (prompts per call, MAC-model batches, calibration prompts and seeds).
    pub const BATCH: Limit = Limit {
        name: "images per batch",
        max: 1024,
        why: "activations grow linearly with the batch",
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_start_keeps_short_text_and_cuts_long_text_at_a_character() {
        assert_eq!(quote_start("abc", 3), "abc");
        assert_eq!(quote_start("abcd", 3), "abc…");
        assert_eq!(quote_start("ääää", 2), "ää…");
        assert_eq!(quote_start(&"x".repeat(100_000), 60).chars().count(), 61);
    }

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A pid above Linux's maximum (2^22) is never alive.
        let dead = d.join(".cand_00034.json.tmp4999999-79-194545715");
        let mine = d.join(format!(".front.json.tmp{}-3-12", std::process::id()));
        let others = [
            d.join("cand_00034.json"),
            d.join(".hidden"),
            d.join(".x.tmp12-a-3"),
        ];
        for p in [&dead, &mine].into_iter().chain(&others) {
            std::fs::write(p, b"x").unwrap();
        }
        let removed = remove_stale_temporaries(d);
        if !Path::new("/proc/self").exists() {
            return;
        }
        assert_eq!(removed, 1);
        assert!(!dead.exists() && mine.exists());
        assert!(others.iter().all(|p| p.exists()));
        // The names atomic_write makes are recognised.
        atomic_write(&d.join("f"), b"y").unwrap();
        assert_eq!(temporary_writer_pid(".f.tmp42-0-123"), Some(42));
        assert_eq!(temporary_writer_pid("f.tmp42-0-123"), None);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        atomic_write(&p, b"first").unwrap();
        atomic_write(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);
    }

    #[test]
    fn atomic_write_errors_name_the_users_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing").join("out.bin");
        let e = atomic_write(&p, b"x").unwrap_err();
        assert_eq!(e.path, p);
        assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
        // Renaming over a folder fails after the write: the temporary file is gone too.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("keep"), b"k").unwrap();
        let e = atomic_write(&sub, b"x").unwrap_err();
        assert_eq!(e.path, sub);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_writes_use_distinct_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("same.json");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let p = &p;
                s.spawn(move || atomic_write(p, &[i; 64]).unwrap());
            }
        });
        let got = std::fs::read(&p).unwrap();
        assert!(got.len() == 64 && got.iter().all(|&b| b == got[0]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn checked_sizes_refuse_overflow() {
        assert_eq!(checked_numel(&[2, 3, 4]), Some(24));
        assert_eq!(checked_numel(&[]), Some(1));
        assert_eq!(checked_numel(&[1 << 31, 1 << 31, 1 << 31]), None);
        assert_eq!(checked_bytes(&[2, 3], 4), Some(24));
        assert_eq!(checked_bytes(&[usize::MAX / 2], 4), None);
        assert_eq!(
            checked_bytes(&[isize::MAX as usize], 1),
            Some(isize::MAX as usize)
        );
        assert_eq!(checked_bytes(&[isize::MAX as usize, 2], 1), None);
    }

    #[test]
    fn limits_accept_up_to_max_and_name_the_field() {
        assert_eq!(limits::STEPS.check("--steps", 1000u64), Ok(1000));
        let e = limits::STEPS
            .check("--steps", 4_000_000_000u64)
            .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("--steps") && m.contains("4000000000") && m.contains("1000"),
            "{m}"
        );
        assert!(limits::LAYERS.check("x", u64::MAX).is_err());
        assert!(limits::VOCAB.check("x", u128::MAX).is_err());
    }

    #[test]
    fn fnv_incremental_matches_one_shot() {
        let mut h = Fnv::default();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.hex(), format!("{:016x}", fnv1a(b"abc")));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
