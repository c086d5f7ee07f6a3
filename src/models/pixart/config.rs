//! `PixArtTransformer2DModel` configuration, read from `transformer/config.json` with the
//! defaults diffusers 0.42 derives.

use crate::weights::config::JsonConfig;
use crate::weights::WResult;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct PixArtConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    pub cross_attention_dim: usize,
    pub attention_bias: bool,
    pub sample_size: usize,
    pub patch_size: usize,
    pub norm_eps: f64,
    /// Effective value: config, or `max(sample_size // 64, 1)` when absent.
    pub interpolation_scale: f64,
    /// Effective value: config, or `sample_size == 128` when absent.
    pub use_additional_conditions: bool,
    /// Text embedding width; `None` = no caption projection (embeddings already inner-dim wide).
    pub caption_channels: Option<usize>,
    /// Feed-forward hidden width (`4 · inner_dim` in every diffusers PixArt).
    pub ff_inner_dim: usize,
}

impl PixArtConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
    /// Grid side of the default positional table (`sample_size / patch_size`).
    pub fn base_size(&self) -> usize {
        self.sample_size / self.patch_size
    }
    /// Width of the text embeddings the model consumes.
    pub fn text_dim(&self) -> usize {
        self.caption_channels.unwrap_or(self.cross_attention_dim)
    }

    pub fn from_file(path: &Path) -> WResult<Self> {
        Self::from_json(&JsonConfig::read(path)?)
    }

    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        if let Some(class) = c.opt_str("_class_name")? {
            if class != "PixArtTransformer2DModel" && class != "Transformer2DModel" {
                return Err(c.invalid(format!(
                    "`_class_name` is {class}, not a PixArt transformer"
                )));
            }
        }
        let norm_type = c.str_or("norm_type", "ada_norm_single")?;
        if norm_type != "ada_norm_single" {
            return Err(c.invalid(format!(
                "norm_type `{norm_type}` is not supported (PixArt uses ada_norm_single)"
            )));
        }
        let act = c.str_or("activation_fn", "gelu-approximate")?;
        if act != "gelu-approximate" {
            return Err(c.invalid(format!(
                "activation_fn `{act}` is not supported (PixArt uses gelu-approximate)"
            )));
        }
        if c.bool_or("only_cross_attention", false)? {
            return Err(c.invalid("only_cross_attention = true is not supported"));
        }
        if c.bool_or("norm_elementwise_affine", false)? {
            return Err(c.invalid("norm_elementwise_affine = true is not supported"));
        }
        let sample_size = c
            .opt_usize("sample_size")?
            .ok_or_else(|| c.invalid("`sample_size` is required"))?;
        let patch_size = c
            .opt_usize("patch_size")?
            .ok_or_else(|| c.invalid("`patch_size` is required"))?;
        let in_channels = c
            .opt_usize("in_channels")?
            .ok_or_else(|| c.invalid("`in_channels` is required"))?;
        let heads = c.usize_or("num_attention_heads", 16)?;
        let head_dim = c.usize_or("attention_head_dim", 72)?;
        let cross = c
            .opt_usize("cross_attention_dim")?
            .or(if c.map.contains_key("cross_attention_dim") {
                None
            } else {
                Some(1152)
            })
            .ok_or_else(|| c.invalid("cross_attention_dim = null is not supported"))?;
        let cfg = PixArtConfig {
            num_attention_heads: heads,
            attention_head_dim: head_dim,
            in_channels,
            out_channels: c.opt_usize("out_channels")?.unwrap_or(
                if c.map.contains_key("out_channels") {
                    in_channels
                } else {
                    8
                },
            ),
            num_layers: c.usize_or("num_layers", 28)?,
            cross_attention_dim: cross,
            attention_bias: c.bool_or("attention_bias", true)?,
            sample_size,
            patch_size,
            norm_eps: c.f64_or("norm_eps", 1e-6)?,
            interpolation_scale: c
                .opt_f64("interpolation_scale")?
                .unwrap_or((sample_size / 64).max(1) as f64),
            use_additional_conditions: c
                .opt_bool("use_additional_conditions")?
                .unwrap_or(sample_size == 128),
            caption_channels: c.opt_usize("caption_channels")?,
            ff_inner_dim: 4 * heads * head_dim,
        };
        if heads == 0 || head_dim == 0 || patch_size == 0 || sample_size == 0 || in_channels == 0 {
            return Err(c.invalid(
                "num_attention_heads, attention_head_dim, patch_size, sample_size and in_channels must be positive",
            ));
        }
        if cfg.use_additional_conditions && !cfg.inner_dim().is_multiple_of(3) {
            return Err(c.invalid(format!(
                "use_additional_conditions needs an inner dim divisible by 3, got {}",
                cfg.inner_dim()
            )));
        }
        if !cfg.inner_dim().is_multiple_of(4) {
            return Err(c.invalid(format!(
                "the 2-D sincos position embedding needs an inner dim divisible by 4, got {}",
                cfg.inner_dim()
            )));
        }
        // The caption projection (or the caller, without one) delivers inner-dim wide text, and
        // attn2's to_k/to_v read it: diffusers builds other values but cannot run them.
        if cfg.cross_attention_dim != cfg.inner_dim() {
            return Err(c.invalid(format!(
                "cross_attention_dim {} differs from the inner dim {} (heads × head dim); diffusers cannot run such a model either",
                cfg.cross_attention_dim,
                cfg.inner_dim()
            )));
        }
        Ok(cfg)
    }

    /// PixArt-XL-2 (the released architecture) at a given sample size, for benchmarks and the
    /// manifests: 28 layers, 16 × 72 heads, caption width 4096.
    pub fn xl2(sample_size: usize, sigma: bool) -> Self {
        let interp = if sigma {
            match sample_size {
                32 => 0.5,
                64 => 1.0,
                128 => 2.0,
                _ => 4.0,
            }
        } else {
            (sample_size / 64).max(1) as f64
        };
        PixArtConfig {
            num_attention_heads: 16,
            attention_head_dim: 72,
            in_channels: 4,
            out_channels: 8,
            num_layers: 28,
            cross_attention_dim: 1152,
            attention_bias: true,
            sample_size,
            patch_size: 2,
            norm_eps: 1e-6,
            interpolation_scale: interp,
            use_additional_conditions: !sigma && sample_size == 128,
            caption_channels: Some(4096),
            ff_inner_dim: 4608,
        }
    }

    /// The tensor names and shapes this config implies, in load order: what
    /// [`super::PixArtTransformer::load`] reads, recorded on the shape-only backend.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        crate::models::record_tensors(&[], |vb| {
            super::PixArtTransformer::load_vb(vb, self.clone()).map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> WResult<PixArtConfig> {
        PixArtConfig::from_json(&JsonConfig::parse(Path::new("config.json"), text)?)
    }

    #[test]
    fn defaults_follow_diffusers() {
        let c = parse(r#"{"_class_name":"Transformer2DModel","sample_size":128,"patch_size":2,"in_channels":4,"caption_channels":4096,"unknown_key":1}"#).unwrap();
        assert_eq!(c.interpolation_scale, 2.0);
        assert!(c.use_additional_conditions);
        assert_eq!(c.out_channels, 8);
        assert_eq!(c.expected_tensors().len(), 611);
        let c = parse(r#"{"sample_size":32,"patch_size":2,"in_channels":4,"caption_channels":4096,"interpolation_scale":0.5,"use_additional_conditions":false}"#).unwrap();
        assert_eq!(c.interpolation_scale, 0.5);
        assert!(!c.use_additional_conditions);
        assert_eq!(c.expected_tensors().len(), 603);
        assert_eq!(c, PixArtConfig::xl2(32, true));
    }

    /// The shipped PixArt manifests hold exactly the tensors the loader reads for their configs.
    #[test]
    fn manifests_match_the_recorded_tensors() {
        use std::collections::BTreeMap;
        let mut seen = 0;
        for m in crate::weights::manifest::manifests() {
            let c = JsonConfig {
                path: m.name.clone().into(),
                map: m.config.clone(),
            };
            if crate::models::flux::FluxConfig::is_flux(&c) || m.is_image_reward() {
                continue;
            }
            seen += 1;
            let want: BTreeMap<_, _> = PixArtConfig::from_json(&c)
                .unwrap()
                .expected_tensors()
                .into_iter()
                .collect();
            let got: BTreeMap<_, _> = m.tensors.iter().cloned().collect();
            assert_eq!(got, want, "{}", m.name);
        }
        assert_eq!(seen, 7);
    }

    #[test]
    fn bad_configs_are_refused_with_the_key() {
        let e = parse(r#"{"patch_size":2,"in_channels":4}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sample_size"), "{e}");
        let e = parse(
            r#"{"sample_size":8,"patch_size":2,"in_channels":4,"norm_type":"ada_norm_zero"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("norm_type"), "{e}");
    }
}
