//! `FluxTransformer2DModel` configuration, read from `transformer/config.json` with the defaults
//! of diffusers 0.42 (`FluxTransformer2DModel.__init__`).

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

    /// Every tensor the checkpoint must hold, with its shape (diffusers names).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.inner_dim();
        let hd = self.attention_head_dim;
        let m = self.mlp_dim();
        let mut v: Vec<(String, Vec<usize>)> = Vec::new();
        let mut lin = |p: &str, i: usize, o: usize| {
            v.push((format!("{p}.weight"), vec![o, i]));
            v.push((format!("{p}.bias"), vec![o]));
        };
        lin("x_embedder", self.in_channels, d);
        lin("context_embedder", self.joint_attention_dim, d);
        let te = "time_text_embed";
        lin(&format!("{te}.timestep_embedder.linear_1"), 256, d);
        lin(&format!("{te}.timestep_embedder.linear_2"), d, d);
        if self.guidance_embeds {
            lin(&format!("{te}.guidance_embedder.linear_1"), 256, d);
            lin(&format!("{te}.guidance_embedder.linear_2"), d, d);
        }
        lin(
            &format!("{te}.text_embedder.linear_1"),
            self.pooled_projection_dim,
            d,
        );
        lin(&format!("{te}.text_embedder.linear_2"), d, d);
        for i in 0..self.num_layers {
            let b = format!("transformer_blocks.{i}");
            lin(&format!("{b}.norm1.linear"), d, 6 * d);
            lin(&format!("{b}.norm1_context.linear"), d, 6 * d);
            for p in [
                "to_q",
                "to_k",
                "to_v",
                "add_q_proj",
                "add_k_proj",
                "add_v_proj",
                "to_out.0",
                "to_add_out",
            ] {
                lin(&format!("{b}.attn.{p}"), d, d);
            }
            lin(&format!("{b}.ff.net.0.proj"), d, m);
            lin(&format!("{b}.ff.net.2"), m, d);
            lin(&format!("{b}.ff_context.net.0.proj"), d, m);
            lin(&format!("{b}.ff_context.net.2"), m, d);
        }
        for i in 0..self.num_single_layers {
            let b = format!("single_transformer_blocks.{i}");
            lin(&format!("{b}.norm.linear"), d, 3 * d);
            for p in ["to_q", "to_k", "to_v"] {
                lin(&format!("{b}.attn.{p}"), d, d);
            }
            lin(&format!("{b}.proj_mlp"), d, m);
            lin(&format!("{b}.proj_out"), d + m, d);
        }
        lin("norm_out.linear", d, 2 * d);
        lin("proj_out", d, self.proj_out_dim());
        for i in 0..self.num_layers {
            for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
                v.push((format!("transformer_blocks.{i}.attn.{n}.weight"), vec![hd]));
            }
        }
        for i in 0..self.num_single_layers {
            for n in ["norm_q", "norm_k"] {
                v.push((
                    format!("single_transformer_blocks.{i}.attn.{n}.weight"),
                    vec![hd],
                ));
            }
        }
        v
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
