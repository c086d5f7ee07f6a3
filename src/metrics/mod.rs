//! Image-quality metrics computed inside the engine: scorers that take decoded 8-bit RGB images
//! (as `generate` and the search's VAE decode produce them, in memory) and their prompts, and
//! return one score per image (higher is better for every metric here).
//!
//! - [`Scorer`]: the interface every metric implements (CLIP score here; ImageReward v1.0 in
//!   `models::image_reward`, plugged in through [`open_scorer`]).
//! - [`MetricSpec`]: `image-reward:DIR` / `clip-score:DIR`, as `search --quality`, `bench
//!   --quality` and `score --metric/--weights` take them.
//! - [`preprocess`]: the image preprocessing of the reference packages, computed in memory.
//!
//! Layering: `metrics` sits between `pipeline` (whose [`RgbImage`] it scores) and `search`
//! (which maximises a scorer's mean).

pub mod clip_score;
pub mod image_reward;
pub mod preprocess;

use crate::backend::Backend;
pub use crate::pipeline::generate::RgbImage;
use std::path::{Path, PathBuf};

/// Everything that can stop a scorer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A `--quality` / `--metric` spec that does not parse.
    #[error("metric `{spec}`: {msg}")]
    Spec { spec: String, msg: String },
    /// The scorer's weights folder is missing parts or does not match its config.
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// Images and prompts that do not fit together, or an image the scorer cannot take.
    #[error("{0}")]
    Input(String),
    /// The metric exists but is not available in this build.
    #[error("{0}")]
    Unsupported(String),
}

pub type MResult<T> = std::result::Result<T, MetricsError>;

/// The metrics the engine computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// ImageReward v1.0 (the `image-reward` package's `ImageReward.score`, normalised).
    ImageReward,
    /// `100 · max(cos(image, text), 0)` with a CLIP model (torchmetrics / `clip-score`).
    ClipScore,
}

impl Metric {
    /// The name in specs and outputs: `image-reward` or `clip-score`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::ImageReward => "image-reward",
            Metric::ClipScore => "clip-score",
        }
    }

    pub fn parse(s: &str) -> MResult<Self> {
        match s.trim() {
            "image-reward" | "imagereward" | "ImageReward" => Ok(Metric::ImageReward),
            "clip-score" | "clip" | "clipscore" => Ok(Metric::ClipScore),
            other => Err(MetricsError::Spec {
                spec: other.to_string(),
                msg: "unknown metric; expected image-reward or clip-score".into(),
            }),
        }
    }
}

/// A metric and the folder holding its weights (`image-reward:DIR`, `clip-score:DIR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricSpec {
    pub metric: Metric,
    pub weights: PathBuf,
}

impl MetricSpec {
    pub fn new(metric: Metric, weights: impl Into<PathBuf>) -> Self {
        MetricSpec {
            metric,
            weights: weights.into(),
        }
    }

    /// Parses `image-reward:DIR` or `clip-score:DIR`.
    pub fn parse(s: &str) -> MResult<Self> {
        let bad = |msg: &str| MetricsError::Spec {
            spec: crate::util::quote_start(s, 80),
            msg: msg.to_string(),
        };
        let (m, dir) = s
            .split_once(':')
            .ok_or_else(|| bad("expected image-reward:DIR or clip-score:DIR"))?;
        let metric = Metric::parse(m).map_err(|_| {
            bad("unknown metric before `:`; expected image-reward:DIR or clip-score:DIR")
        })?;
        if dir.trim().is_empty() {
            return Err(bad("the weights folder after `:` is empty"));
        }
        Ok(MetricSpec::new(metric, dir))
    }

    /// `metric:DIR` as given.
    pub fn spec(&self) -> String {
        format!("{}:{}", self.metric.name(), self.weights.display())
    }
}

/// A quality metric over decoded images.
///
/// Determinism and batching:
/// - On the CPU backend the scores are exact functions of the images and prompts: the same
///   pairs give the same scores, bit for bit, whatever the batching (one image at a time or
///   [`Scorer::max_batch`] together; tests/image_reward.rs and tests/clip_score_parity.rs
///   check it), so `score` prints the same bytes of JSON for the same images.
/// - On the CUDA backend this is not promised and has not been verified on a GPU: a run repeated
///   with the same batches is expected to repeat its results, but cuBLAS may pick another GEMM
///   algorithm (another summation order) for another batch size, so a score can differ in its
///   last bits between batchings; and CUDA scores differ from the CPU's in their low bits (the
///   `*on_gpu*` parity tests hold them to the references' tolerances when a GPU is lent).
pub trait Scorer: Send {
    /// `image-reward` or `clip-score` ([`Metric::name`]).
    fn metric(&self) -> &'static str;

    /// One score per `(images[i], prompts[i])`; `images.len() == prompts.len()` (else
    /// [`MetricsError::Input`]). Callers keep batches at most [`Scorer::max_batch`] long;
    /// [`score_all`] splits longer lists.
    fn score_batch(&self, images: &[&RgbImage], prompts: &[&str]) -> MResult<Vec<f64>>;

    /// The largest batch one `score_batch` call takes (memory bound of the scorer's forward).
    fn max_batch(&self) -> usize;

    /// A fingerprint of the scorer's identity and weights (metric, config, a hash of the
    /// weight files): a search checkpoint records it, so a resume with other weights is refused.
    fn fingerprint(&self) -> String;
}

/// Scores any number of pairs through `scorer` in batches of at most `max_batch`.
pub fn score_all(scorer: &dyn Scorer, images: &[&RgbImage], prompts: &[&str]) -> MResult<Vec<f64>> {
    if images.len() != prompts.len() {
        return Err(MetricsError::Input(format!(
            "{} images but {} prompts",
            images.len(),
            prompts.len()
        )));
    }
    let b = scorer.max_batch().max(1);
    let mut out = Vec::with_capacity(images.len());
    for (imgs, ps) in images.chunks(b).zip(prompts.chunks(b)) {
        out.extend(scorer.score_batch(imgs, ps)?);
    }
    Ok(out)
}

/// The mean of a set of scores with its 95 % confidence interval.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (`n − 1` in the denominator); 0 for one score.
    pub std: f64,
    /// `mean ± t · std / √n` with Student's t quantile 0.975 for `n − 1` degrees of freedom;
    /// `None` for fewer than two scores.
    pub ci95: Option<[f64; 2]>,
}

/// Student's t quantile 0.975 for `df` degrees of freedom: the usual table (3 decimals) up to
/// 30, then the Cornish–Fisher expansion around the normal quantile (error below 1e-5 there).
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    if (1..=30).contains(&df) {
        return T[df - 1];
    }
    let z: f64 = 1.959_963_984_540_054;
    let v = df.max(1) as f64;
    let (z3, z5, z7, z9) = (z.powi(3), z.powi(5), z.powi(7), z.powi(9));
    z + (z3 + z) / (4.0 * v)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * v * v)
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * v.powi(3))
        + (79.0 * z9 + 776.0 * z7 + 1482.0 * z5 - 1920.0 * z3 - 945.0 * z) / (92160.0 * v.powi(4))
}

/// Mean, standard deviation and 95 % interval of `scores` (summed in order, in f64).
pub fn summarize(scores: &[f64]) -> Summary {
    let n = scores.len();
    if n == 0 {
        return Summary {
            n,
            mean: f64::NAN,
            std: f64::NAN,
            ci95: None,
        };
    }
    let mean = scores.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Summary {
            n,
            mean,
            std: 0.0,
            ci95: None,
        };
    }
    let var = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    let h = t975(n - 1) * std / (n as f64).sqrt();
    Summary {
        n,
        mean,
        std,
        ci95: Some([mean - h, mean + h]),
    }
}

/// Opens the scorer `spec` names on `be` (weights read from `spec.weights`).
pub fn open_scorer<'a, B: Backend>(spec: &MetricSpec, be: &'a B) -> MResult<Box<dyn Scorer + 'a>> {
    match spec.metric {
        Metric::ClipScore => open_clip_score(&spec.weights, be),
        Metric::ImageReward => Ok(Box::new(image_reward::ImageRewardScorer::open(
            &spec.weights,
            be,
        )?)),
    }
}

fn open_clip_score<'a, B: Backend>(dir: &Path, be: &'a B) -> MResult<Box<dyn Scorer + 'a>> {
    Ok(Box::new(clip_score::ClipScorer::open(dir, be)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s = MetricSpec::parse("clip-score:/w/clip").unwrap();
        assert_eq!(s.metric, Metric::ClipScore);
        assert_eq!(s.weights, PathBuf::from("/w/clip"));
        assert_eq!(s.spec(), "clip-score:/w/clip");
        let s = MetricSpec::parse("image-reward:dir:with:colons").unwrap();
        assert_eq!(s.metric, Metric::ImageReward);
        assert_eq!(s.weights, PathBuf::from("dir:with:colons"));
        for bad in ["clip-score", "clip-score:", "fid:/x", ":x", ""] {
            assert!(MetricSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn summaries() {
        let s = summarize(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.mean, 2.5);
        let sd = (5.0f64 / 3.0).sqrt();
        assert!((s.std - sd).abs() < 1e-12);
        let h = 3.182 * sd / 2.0;
        assert_eq!(s.ci95, Some([2.5 - h, 2.5 + h]));
        assert_eq!(summarize(&[7.0]).ci95, None);
        // The expansion continues the table: t(31) ≈ 2.0395, t(120) ≈ 1.9799, t(∞) → 1.95996.
        assert!((t975(31) - 2.0395).abs() < 1e-4, "{}", t975(31));
        assert!((t975(120) - 1.9799).abs() < 1e-4, "{}", t975(120));
        assert!((t975(999) - 1.9623).abs() < 1e-4, "{}", t975(999));
    }
}
