//! The decoder half of diffusers' `AutoencoderKL` (SD / SDXL VAE), as `vae.decode` computes it.
//! See shared/docs/pixart-spec.md §6.
//!
//! `post_quant_conv` (1×1) → `decoder.conv_in` (3×3) → mid block (resnet, single-head attention
//! with GroupNorm and a residual, resnet) → up blocks (`layers_per_block + 1` resnets each,
//! nearest ×2 upsample + 3×3 conv except in the last) → GroupNorm + SiLU → `conv_out`.
//! GroupNorm everywhere: `norm_num_groups` groups, eps 1e-6. [`VaeDecoder::decode_latents`]
//! maps pipeline latents to decoder input as `latents / scaling_factor (+ shift_factor)`: PixArt's
//! config has no shift factor, FLUX's VAE (16 latent channels, no `quant_conv` /
//! `post_quant_conv`) has one (flux-spec §8).

use super::{Linear, MResult, ModelError, TensorSource, Vb};
use crate::backend::{BResult, Backend, Tensor};
use crate::util::limits;
use crate::weights::config::JsonConfig;
use crate::weights::WResult;
use std::path::Path;

/// GroupNorm eps of every decoder norm.
pub const VAE_EPS: f32 = 1e-6;

/// `vae/config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub out_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    /// `shift_factor` (FLUX: 0.1159); `None` when absent or null (SD/PixArt VAEs).
    pub shift_factor: Option<f64>,
    /// `use_quant_conv`: only the encoder uses `quant_conv`, so the decoder just records it.
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    /// Pixels per latent cell: `2^(len(block_out_channels) − 1)`.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    pub fn from_file(path: &Path) -> WResult<Self> {
        Self::from_json(&JsonConfig::read(path)?)
    }

    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        if let Some(class) = c.opt_str("_class_name")? {
            if class != "AutoencoderKL" {
                return Err(c.invalid(format!(
                    "`_class_name` is {class}: only AutoencoderKL is supported"
                )));
            }
        }
        let boc: Vec<usize> = match c.map.get("block_out_channels") {
            None => vec![64],
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_u64().map(|u| u as usize))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| c.invalid("`block_out_channels` must be a list of integers"))?,
        };
        limits::LAYERS
            .check("the length of `block_out_channels`", boc.len() as u128)
            .map_err(|e| c.invalid(e.to_string()))?;
        for &ch in &boc {
            limits::DIM
                .check("an entry of `block_out_channels`", ch as u128)
                .map_err(|e| c.invalid(e.to_string()))?;
        }
        if let Some(v) = c.map.get("up_block_types") {
            let ok = v.as_array().is_some_and(|a| {
                a.len() == boc.len() && a.iter().all(|t| t.as_str() == Some("UpDecoderBlock2D"))
            });
            if !ok {
                return Err(c.invalid(
                    "`up_block_types` must be UpDecoderBlock2D, one per block_out_channels entry",
                ));
            }
        }
        let act = c.str_or("act_fn", "silu")?;
        if act != "silu" {
            return Err(c.invalid(format!("act_fn `{act}` is not supported (silu only)")));
        }
        let cfg = VaeConfig {
            layers_per_block: c.usize_or("layers_per_block", 1)?,
            latent_channels: c.usize_or("latent_channels", 4)?,
            out_channels: c.usize_or("out_channels", 3)?,
            norm_num_groups: c.usize_or("norm_num_groups", 32)?,
            scaling_factor: c.f64_or("scaling_factor", 0.18215)?,
            shift_factor: c.opt_f64("shift_factor")?,
            use_quant_conv: c.bool_or("use_quant_conv", true)?,
            use_post_quant_conv: c.bool_or("use_post_quant_conv", true)?,
            mid_block_add_attention: c.bool_or("mid_block_add_attention", true)?,
            block_out_channels: boc,
        };
        let g = cfg.norm_num_groups;
        if cfg.block_out_channels.is_empty()
            || g == 0
            || cfg
                .block_out_channels
                .iter()
                .any(|&ch| ch == 0 || ch % g != 0)
        {
            return Err(c.invalid(format!(
                "block_out_channels {:?} must be non-empty and divisible by norm_num_groups {g}",
                cfg.block_out_channels
            )));
        }
        if !(cfg.scaling_factor.is_finite() && cfg.scaling_factor > 0.0) {
            return Err(c.invalid("`scaling_factor` must be a positive number"));
        }
        if cfg.shift_factor.is_some_and(|s| !s.is_finite()) {
            return Err(c.invalid("`shift_factor` must be a finite number or null"));
        }
        Ok(cfg)
    }
}

/// A 2-D convolution with bias.
pub struct Conv2d<B: Backend> {
    pub weight: Tensor<B>,
    pub bias: Tensor<B>,
    pub padding: usize,
}

impl<B: Backend> Conv2d<B> {
    fn load(vb: &Vb<'_, B>, cin: usize, cout: usize, k: usize) -> MResult<Self> {
        Ok(Conv2d {
            weight: vb.get(&[cout, cin, k, k], "weight")?,
            bias: vb.get(&[cout], "bias")?,
            padding: k / 2,
        })
    }
    pub fn forward(&self, be: &B, x: &Tensor<B>) -> BResult<Tensor<B>> {
        be.conv2d(x, &self.weight, Some(&self.bias), 1, self.padding)
    }
}

/// An affine GroupNorm.
pub struct GroupNorm<B: Backend> {
    pub weight: Tensor<B>,
    pub bias: Tensor<B>,
}

impl<B: Backend> GroupNorm<B> {
    fn load(vb: &Vb<'_, B>, c: usize) -> MResult<Self> {
        Ok(GroupNorm {
            weight: vb.get(&[c], "weight")?,
            bias: vb.get(&[c], "bias")?,
        })
    }
}

/// `ResnetBlock2D` without time embedding.
pub struct ResnetBlock2D<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub norm2: GroupNorm<B>,
    pub conv2: Conv2d<B>,
    pub conv_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock2D<B> {
    fn load(vb: &Vb<'_, B>, cin: usize, cout: usize) -> MResult<Self> {
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&vb.pp("norm1"), cin)?,
            conv1: Conv2d::load(&vb.pp("conv1"), cin, cout, 3)?,
            norm2: GroupNorm::load(&vb.pp("norm2"), cout)?,
            conv2: Conv2d::load(&vb.pp("conv2"), cout, cout, 3)?,
            conv_shortcut: if cin != cout {
                Some(Conv2d::load(&vb.pp("conv_shortcut"), cin, cout, 1)?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, be: &B, x: &Tensor<B>, groups: usize) -> BResult<Tensor<B>> {
        let h = be.group_norm(
            x,
            groups,
            &self.norm1.weight,
            &self.norm1.bias,
            VAE_EPS,
            true,
        )?;
        let h = self.conv1.forward(be, &h)?;
        let h = be.group_norm(
            &h,
            groups,
            &self.norm2.weight,
            &self.norm2.bias,
            VAE_EPS,
            true,
        )?;
        let h = self.conv2.forward(be, &h)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(be, x)?,
            None => x.clone(),
        };
        be.add(&skip, &h)
    }
}

/// The mid block's `attentions.0`: GroupNorm, single-head attention over the H·W positions,
/// output projection, residual.
pub struct VaeAttention<B: Backend> {
    pub group_norm: GroupNorm<B>,
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    /// `to_out.0`
    pub to_out_0: Linear<B>,
}

/// Loads the `[c, c]` linear `new`, or its legacy form `legacy`
/// (`query`/`key`/`value`/`proj_attn`), the legacy form also as a `[c, c, 1, 1]` convolution
/// weight.
fn load_attn_linear<B: Backend>(
    new: &Vb<'_, B>,
    legacy: &Vb<'_, B>,
    c: usize,
) -> MResult<Linear<B>> {
    let lin = if !new.contains("weight") && legacy.contains("weight") {
        legacy
    } else {
        new
    };
    Ok(Linear {
        weight: lin.get_reshaped(&[c, c], &[c, c, 1, 1], "weight")?,
        bias: Some(lin.get(&[c], "bias")?),
    })
}

impl<B: Backend> VaeAttention<B> {
    fn load(vb: &Vb<'_, B>, c: usize) -> MResult<Self> {
        let l = |new: Vb<'_, B>, legacy: &str| load_attn_linear(&new, &vb.pp(legacy), c);
        Ok(VaeAttention {
            group_norm: GroupNorm::load(&vb.pp("group_norm"), c)?,
            to_q: l(vb.pp("to_q"), "query")?,
            to_k: l(vb.pp("to_k"), "key")?,
            to_v: l(vb.pp("to_v"), "value")?,
            to_out_0: l(vb.pp("to_out").pp(0), "proj_attn")?,
        })
    }

    pub fn forward(&self, be: &B, x: &Tensor<B>, groups: usize) -> BResult<Tensor<B>> {
        let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let gn = &self.group_norm;
        let hs = be.group_norm(x, groups, &gn.weight, &gn.bias, VAE_EPS, false)?;
        let hs = be.permute(&hs.reshape(&[n, c, h * w])?, &[0, 2, 1])?;
        let q = self.to_q.forward(be, &hs)?;
        let k = self.to_k.forward(be, &hs)?;
        let v = self.to_v.forward(be, &hs)?;
        let scale = 1.0 / (c as f32).sqrt();
        let o = be.attention(&q, &k, &v, 1, scale, None, None, false)?;
        let o = self.to_out_0.forward(be, &o)?;
        let o = be.permute(&o, &[0, 2, 1])?.reshape(&[n, c, h, w])?;
        be.add(&o, x)
    }
}

/// `decoder.mid_block`.
pub struct MidBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attention: Option<VaeAttention<B>>,
}

/// `decoder.up_blocks.{i}` (UpDecoderBlock2D).
pub struct UpDecoderBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `upsamplers.0.conv` (absent in the last block).
    pub upsampler: Option<Conv2d<B>>,
}

/// The decoder with `post_quant_conv`.
pub struct VaeDecoder<B: Backend> {
    pub config: VaeConfig,
    pub post_quant_conv: Option<Conv2d<B>>,
    pub conv_in: Conv2d<B>,
    pub mid_block: MidBlock<B>,
    pub up_blocks: Vec<UpDecoderBlock<B>>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> VaeDecoder<B> {
    pub fn load(be: &B, config: VaeConfig, src: &dyn TensorSource) -> MResult<Self> {
        Self::load_vb(&Vb::new(be, src), config)
    }

    /// Builds the decoder from the scope holding `post_quant_conv` and `decoder` (the checkpoint
    /// root).
    pub fn load_vb(vb: &Vb<'_, B>, config: VaeConfig) -> MResult<Self> {
        let c = &config;
        let boc = &c.block_out_channels;
        let (Some(&top), Some(&bottom)) = (boc.last(), boc.first()) else {
            return Err(ModelError::Input("VAE block_out_channels is empty".into()));
        };
        let lat = c.latent_channels;
        let post_quant_conv = if c.use_post_quant_conv {
            Some(Conv2d::load(&vb.pp("post_quant_conv"), lat, lat, 1)?)
        } else {
            None
        };
        let dec = vb.pp("decoder");
        let conv_in = Conv2d::load(&dec.pp("conv_in"), lat, top, 3)?;
        let mid = dec.pp("mid_block");
        let mid_resnets = mid.pp("resnets");
        let mid_block = MidBlock {
            resnets: vec![
                ResnetBlock2D::load(&mid_resnets.pp(0), top, top)?,
                ResnetBlock2D::load(&mid_resnets.pp(1), top, top)?,
            ],
            attention: if c.mid_block_add_attention {
                Some(VaeAttention::load(&mid.pp("attentions").pp(0), top)?)
            } else {
                None
            },
        };
        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let ups = dec.pp("up_blocks");
        let mut up_blocks = Vec::with_capacity(rev.len());
        let mut out_ch = top;
        for (i, &ch) in rev.iter().enumerate() {
            let prev = out_ch;
            out_ch = ch;
            let ub = ups.pp(i);
            let res = ub.pp("resnets");
            let mut resnets = Vec::with_capacity(c.layers_per_block + 1);
            for j in 0..=c.layers_per_block {
                let cin = if j == 0 { prev } else { out_ch };
                resnets.push(ResnetBlock2D::load(&res.pp(j), cin, out_ch)?);
            }
            let upsampler = if i + 1 < rev.len() {
                Some(Conv2d::load(
                    &ub.pp("upsamplers").pp(0).pp("conv"),
                    out_ch,
                    out_ch,
                    3,
                )?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock { resnets, upsampler });
        }
        Ok(VaeDecoder {
            conv_norm_out: GroupNorm::load(&dec.pp("conv_norm_out"), bottom)?,
            conv_out: Conv2d::load(&dec.pp("conv_out"), bottom, c.out_channels, 3)?,
            post_quant_conv,
            conv_in,
            mid_block,
            up_blocks,
            config,
        })
    }

    /// `decode(z)` for `z` = latents already divided by the scaling factor: `[N, C_lat, h, w]`
    /// → `[N, out_channels, h·f, w·f]` (range about [−1, 1]).
    pub fn decode(&self, be: &B, z: &Tensor<B>) -> MResult<Tensor<B>> {
        let c = &self.config;
        if z.dims() != 4 || z.dim(1) != c.latent_channels || z.dim(2) == 0 || z.dim(3) == 0 {
            return Err(ModelError::Input(format!(
                "VAE latents must be [N, {}, h, w], got {:?}",
                c.latent_channels,
                z.shape()
            )));
        }
        let g = c.norm_num_groups;
        let mut x = match &self.post_quant_conv {
            Some(pq) => pq.forward(be, z)?,
            None => z.clone(),
        };
        x = self.conv_in.forward(be, &x)?;
        x = self.mid_block.resnets[0].forward(be, &x, g)?;
        if let Some(a) = &self.mid_block.attention {
            x = a.forward(be, &x, g)?;
        }
        x = self.mid_block.resnets[1].forward(be, &x, g)?;
        for ub in &self.up_blocks {
            for r in &ub.resnets {
                x = r.forward(be, &x, g)?;
            }
            if let Some(up) = &ub.upsampler {
                x = up.forward(be, &be.upsample_nearest2x(&x)?)?;
            }
        }
        let n = &self.conv_norm_out;
        x = be.group_norm(&x, g, &n.weight, &n.bias, VAE_EPS, true)?;
        Ok(self.conv_out.forward(be, &x)?)
    }

    /// Decodes pipeline latents: `latents / scaling_factor + shift_factor` (a true f32 division,
    /// then an f32 addition when the config has a shift factor, as torch does them), then
    /// [`Self::decode`].
    pub fn decode_latents(&self, be: &B, latents: &Tensor<B>) -> MResult<Tensor<B>> {
        let sf = self.config.scaling_factor as f32;
        let mut z = be.to_host(latents)?;
        match self.config.shift_factor {
            None => z.iter_mut().for_each(|v| *v /= sf),
            Some(shift) => {
                let shift = shift as f32;
                z.iter_mut().for_each(|v| *v = *v / sf + shift);
            }
        }
        let z = be.upload(z, latents.shape())?;
        self.decode(be, &z)
    }
}
