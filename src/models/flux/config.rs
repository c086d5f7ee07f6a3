//! `FluxTransformer2DModel` configuration, read from `transformer/config.json` with the defaults
//! of diffusers 0.42 (`FluxTransformer2DModel.__init__`).

use crate::util::limits;
use crate::weights::config::JsonConfig;
use crate::weights::WResult;
use std::path::Path;

/// RoPE base frequency; hard-coded in diffusers (`FluxPosEmbed(theta=10000, ...)`).
pub const ROPE_THETA: f64 = 10000.0;

#[derive(Clone, Debug, PartialEq)]
pub struct FluxConfig {
    pub patch_size: usize,
    pub in_channels: usize,
    /// Effective value: config, or `in_channels` when null/absent (`out_channels or in_channels`).
    pub out_channels: usize,
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub pooled_projection_dim: usize,
    pub guidance_embeds: bool,
    /// Per-axis RoPE widths (sum = head dim, each even).
    pub axes_dims_rope: Vec<usize>,
}

impl FluxConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
    /// MLP hidden width (`FeedForward(mult=4)`, `mlp_ratio=4.0`).
    pub fn mlp_dim(&self) -> usize {
        4 * self.inner_dim()
    }
    /// `proj_out` width: `patch_size² · out_channels`.
    pub fn proj_out_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.out_channels
    }

    /// FLUX.1-dev's transformer config (flux-spec §1; `axes_dims_rope` defaulted).
    pub fn flux1_dev() -> Self {
        FluxConfig {
            patch_size: 1,
            in_channels: 64,
            out_channels: 64,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: true,
            axes_dims_rope: vec![16, 56, 56],
        }
    }

    /// Whether a transformer config names the FLUX class.
    pub fn is_flux(c: &JsonConfig) -> bool {
        matches!(c.opt_str("_class_name"), Ok(Some(s)) if s == "FluxTransformer2DModel")
    }

    pub fn from_file(path: &Path) -> WResult<Self> {
        Self::from_json(&JsonConfig::read(path)?)
    }

    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        if let Some(class) = c.opt_str("_class_name")? {
            if class != "FluxTransformer2DModel" {
                return Err(c.invalid(format!("`_class_name` is {class}, not a FLUX transformer")));
            }
        }
        let in_channels = c.usize_or("in_channels", 64)?;
        let axes_dims_rope = match c.map.get("axes_dims_rope") {
            None | Some(serde_json::Value::Null) => vec![16, 56, 56],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|u| u as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| c.invalid("`axes_dims_rope` must be a list of integers"))?,
            Some(_) => return Err(c.invalid("`axes_dims_rope` must be a list of integers")),
        };
        limits::LAYERS
            .check(
                "the length of `axes_dims_rope`",
                axes_dims_rope.len() as u128,
            )
            .map_err(|e| c.invalid(e.to_string()))?;
        for &d in &axes_dims_rope {
            limits::DIM
                .check("an entry of `axes_dims_rope`", d as u128)
                .map_err(|e| c.invalid(e.to_string()))?;
        }
        let cfg = FluxConfig {
            patch_size: c.usize_or("patch_size", 1)?,
            in_channels,
            out_channels: c.opt_usize("out_channels")?.unwrap_or(in_channels),
            num_layers: c.usize_or("num_layers", 19)?,
            num_single_layers: c.usize_or("num_single_layers", 38)?,
            attention_head_dim: c.usize_or("attention_head_dim", 128)?,
            num_attention_heads: c.usize_or("num_attention_heads", 24)?,
            joint_attention_dim: c.usize_or("joint_attention_dim", 4096)?,
            pooled_projection_dim: c.usize_or("pooled_projection_dim", 768)?,
            guidance_embeds: c.bool_or("guidance_embeds", false)?,
            axes_dims_rope,
        };
        if cfg.patch_size == 0
            || cfg.in_channels == 0
            || cfg.out_channels == 0
            || cfg.attention_head_dim == 0
            || cfg.num_attention_heads == 0
            || cfg.joint_attention_dim == 0
            || cfg.pooled_projection_dim == 0
        {
            return Err(c.invalid(
                "patch_size, channels, head settings, joint_attention_dim and pooled_projection_dim must be positive",
            ));
        }
        let sum: usize = cfg.axes_dims_rope.iter().sum();
        if sum != cfg.attention_head_dim || cfg.axes_dims_rope.iter().any(|d| d % 2 != 0) {
            return Err(c.invalid(format!(
                "axes_dims_rope {:?} must be even widths summing to attention_head_dim {}",
                cfg.axes_dims_rope, cfg.attention_head_dim
            )));
        }
        Ok(cfg)
    }

    /// Every tensor the checkpoint must hold, with its shape (diffusers names), in load
    /// order: what [`super::FluxTransformer::load`] reads, recorded on the shape-only backend.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        crate::models::record_tensors(&[], |vb| {
            super::FluxTransformer::load_vb(vb, self.clone()).map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> WResult<FluxConfig> {
        FluxConfig::from_json(&JsonConfig::parse(Path::new("config.json"), text)?)
    }

    #[test]
    fn flux_dev_config_takes_diffusers_defaults() {
        let c = parse(
            r#"{"_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.30.0.dev0",
                "attention_head_dim": 128, "guidance_embeds": true, "in_channels": 64,
                "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
                "num_single_layers": 38, "out_channels": null, "patch_size": 1,
                "pooled_projection_dim": 768, "unknown_key": 1}"#,
        )
        .unwrap();
        assert_eq!(c.out_channels, 64);
        assert_eq!(c.axes_dims_rope, vec![16, 56, 56]);
        assert_eq!(c.inner_dim(), 3072);
        assert_eq!(c.expected_tensors().len(), 1160);
        let c = parse("{}").unwrap();
        assert!(!c.guidance_embeds);
        assert_eq!(
            (c.num_layers, c.num_single_layers, c.in_channels),
            (19, 38, 64)
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(parse(r#"{"axes_dims_rope": [16, 56, 50]}"#).is_err());
        assert!(parse(r#"{"attention_head_dim": 8, "axes_dims_rope": [3, 3, 2]}"#).is_err());
        assert!(parse(r#"{"_class_name": "PixArtTransformer2DModel"}"#).is_err());
    }
}
