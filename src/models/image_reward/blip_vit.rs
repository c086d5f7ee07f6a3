//! BLIP's `VisionTransformer` (`ImageReward/models/BLIP/vit.py`, the `blip.visual_encoder` of
//! ImageReward): ViT-L/16 at 224 px for ImageReward v1.0.
//!
//! - `patch_embed.proj`: a conv with kernel = stride = `patch_size` and a bias, flattened to
//!   tokens; `cls_token` prepended; `pos_embed[:, :1 + g²]` added (dropout: identity at eval);
//! - `depth` pre-LN blocks: `x += proj(attn(norm1(x)))`, `x += fc2(gelu(fc1(norm2(x))))`, with
//!   one fused `qkv` linear (bias on: `qkv_bias=True`) split into q, k, v in that order, scale
//!   `head_dim^-0.5`, exact (erf) GELU (`nn.GELU`), no attention mask; `drop_path` (0.1 for the
//!   large ViT) and gradient checkpointing only act in training and change nothing here;
//! - the final `norm`. Every LayerNorm has eps 1e-6 (`partial(nn.LayerNorm, eps=1e-6)`).
//!
//! The output is every token, `[B, 1 + g², width]`: the image tokens BERT's cross-attention
//! reads.

use crate::backend::{Activation, Backend, Tensor};
use crate::models::clip::LayerNorm;
use crate::models::{Linear, MResult, ModelError, Vb};
use crate::weights::config::JsonConfig;
use crate::weights::WResult;

/// The `vision_config` of an ImageReward folder's config.json (the arguments of BLIP's
/// `create_vit`; defaults: ImageReward v1.0's `vit='large'`, 224 px).
#[derive(Clone, Debug, PartialEq)]
pub struct BlipVitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// `int(embed_dim * mlp_ratio)` (4096 for the large ViT).
    pub mlp_hidden_dim: usize,
    pub layer_norm_eps: f64,
}

impl Default for BlipVitConfig {
    fn default() -> Self {
        BlipVitConfig {
            image_size: 224,
            patch_size: 16,
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            mlp_hidden_dim: 4096,
            layer_norm_eps: 1e-6,
        }
    }
}

impl BlipVitConfig {
    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        let d = BlipVitConfig::default();
        let embed_dim = c.usize_or("embed_dim", d.embed_dim)?;
        let cfg = BlipVitConfig {
            image_size: c.usize_or("image_size", d.image_size)?,
            patch_size: c.usize_or("patch_size", d.patch_size)?,
            embed_dim,
            depth: c.usize_or("depth", d.depth)?,
            num_heads: c.usize_or("num_heads", d.num_heads)?,
            mlp_hidden_dim: c.usize_or("mlp_hidden_dim", embed_dim.saturating_mul(4))?,
            layer_norm_eps: c.f64_or("layer_norm_eps", d.layer_norm_eps)?,
        };
        if cfg.embed_dim == 0
            || cfg.depth == 0
            || cfg.num_heads == 0
            || cfg.patch_size == 0
            || cfg.mlp_hidden_dim == 0
            || cfg.image_size == 0
            || !cfg.image_size.is_multiple_of(cfg.patch_size)
            || cfg.image_size > 4096
        {
            return Err(c.invalid(
                "vision_config: sizes must be positive, image_size ≤ 4096 and a multiple of \
                 patch_size",
            ));
        }
        if !cfg.embed_dim.is_multiple_of(cfg.num_heads) {
            return Err(c.invalid(format!(
                "vision_config: embed_dim {} is not divisible by num_heads {}",
                cfg.embed_dim, cfg.num_heads
            )));
        }
        if cfg.num_positions() > 1 << 16 {
            return Err(c.invalid(format!(
                "vision_config: {} image tokens exceed 65536",
                cfg.num_positions()
            )));
        }
        if !(cfg.layer_norm_eps.is_finite() && cfg.layer_norm_eps > 0.0) {
            return Err(c.invalid("vision_config: layer_norm_eps must be a positive number"));
        }
        Ok(cfg)
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Tokens: the class token and the patches.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }
}

/// `patch_embed` (timm's `PatchEmbed`: `proj` conv, no norm).
pub struct PatchEmbed<B: Backend> {
    pub proj: Conv2d<B>,
}

/// `nn.Conv2d` with a bias.
pub struct Conv2d<B: Backend> {
    pub weight: Tensor<B>,
    pub bias: Tensor<B>,
}

/// `blocks.{i}.attn`.
pub struct Attention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
}

/// `blocks.{i}.mlp`.
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

/// `blocks.{i}`.
pub struct Block<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

/// `blip.visual_encoder`.
pub struct VisionTransformer<B: Backend> {
    pub config: BlipVitConfig,
    pub patch_embed: PatchEmbed<B>,
    /// `cls_token`, `[1, 1, D]`.
    pub cls_token: Tensor<B>,
    /// `pos_embed`, `[1, 1 + g², D]` (uploaded as `[1 + g², D]`).
    pub pos_embed: Tensor<B>,
    pub blocks: Vec<Block<B>>,
    pub norm: LayerNorm<B>,
}

impl<B: Backend> VisionTransformer<B> {
    /// Loads from the scope holding `patch_embed`, `cls_token`, ... (`blip.visual_encoder`).
    pub fn load(vb: &Vb<'_, B>, config: BlipVitConfig) -> MResult<Self> {
        let c = &config;
        let (d, p, n) = (c.embed_dim, c.patch_size, c.num_positions());
        let pe = vb.pp("patch_embed").pp("proj");
        let patch_embed = PatchEmbed {
            proj: Conv2d {
                weight: pe.get(&[d, 3, p, p], "weight")?,
                bias: pe.get(&[d], "bias")?,
            },
        };
        let cls_token = vb.get(&[1, 1, d], "cls_token")?;
        let pos = vb.get_host(&[1, n, d], "pos_embed")?;
        let pos_embed = vb.backend().upload_weight(pos, &[n, d])?;
        let bl = vb.pp("blocks");
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = bl.pp(i);
            let (at, mlp) = (b.pp("attn"), b.pp("mlp"));
            blocks.push(Block {
                norm1: LayerNorm::load(&b.pp("norm1"), d)?,
                attn: Attention {
                    qkv: Linear::load(&at.pp("qkv"), d, 3 * d, true)?,
                    proj: Linear::load(&at.pp("proj"), d, d, true)?,
                },
                norm2: LayerNorm::load(&b.pp("norm2"), d)?,
                mlp: Mlp {
                    fc1: Linear::load(&mlp.pp("fc1"), d, c.mlp_hidden_dim, true)?,
                    fc2: Linear::load(&mlp.pp("fc2"), c.mlp_hidden_dim, d, true)?,
                },
            });
        }
        Ok(VisionTransformer {
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm: LayerNorm::load(&vb.pp("norm"), d)?,
            config,
        })
    }

    /// The patch tokens with the class token and the positions, `[B, 1 + g², D]`, from
    /// normalised pixels `[B, 3, S, S]` (S = `image_size`).
    pub fn embed(&self, be: &B, pixels: &Tensor<B>) -> MResult<Tensor<B>> {
        let c = &self.config;
        let s = c.image_size;
        let sh = pixels.shape();
        if sh.len() != 4 || sh[0] == 0 || sh[1] != 3 || sh[2] != s || sh[3] != s {
            return Err(ModelError::Input(format!(
                "ImageReward: pixels {sh:?}, expected [B, 3, {s}, {s}] (B ≥ 1)"
            )));
        }
        let (b, d, g) = (sh[0], c.embed_dim, c.grid());
        let proj = &self.patch_embed.proj;
        let x = be.conv2d(pixels, &proj.weight, Some(&proj.bias), c.patch_size, 0)?;
        let x = be.permute(&x.reshape(&[b, d, g * g])?, &[0, 2, 1])?;
        let cls: Vec<&Tensor<B>> = vec![&self.cls_token; b];
        let cls = be.concat(&cls, 0)?;
        let x = be.concat(&[&cls, &x], 1)?;
        Ok(be.add(&x, &self.pos_embed)?)
    }

    /// `visual_encoder(image)`: every token after the final `norm`, `[B, 1 + g², D]`.
    pub fn forward(&self, be: &B, pixels: &Tensor<B>) -> MResult<Tensor<B>> {
        self.forward_with(be, pixels, self.config.layer_norm_eps as f32)
    }

    /// [`Self::forward`] with another LayerNorm eps (for the tests that show the tolerance
    /// catches a wrong eps).
    pub fn forward_with(&self, be: &B, pixels: &Tensor<B>, eps: f32) -> MResult<Tensor<B>> {
        let c = &self.config;
        let d = c.embed_dim;
        let scale = (c.head_dim() as f32).powf(-0.5);
        let mut x = self.embed(be, pixels)?;
        for blk in &self.blocks {
            let h = blk.norm1.forward(be, &x, eps)?;
            let qkv = blk.attn.qkv.forward(be, &h)?;
            let q = be.narrow(&qkv, 2, 0, d)?;
            let k = be.narrow(&qkv, 2, d, d)?;
            let v = be.narrow(&qkv, 2, 2 * d, d)?;
            let o = be.attention(&q, &k, &v, c.num_heads, scale, None, None, false)?;
            x = be.add(&x, &blk.attn.proj.forward(be, &o)?)?;
            let h = blk.norm2.forward(be, &x, eps)?;
            let h = blk.mlp.fc1.forward_act(be, &h, Activation::GeluErf)?;
            x = be.add(&x, &blk.mlp.fc2.forward(be, &h)?)?;
        }
        Ok(self.norm.forward(be, &x, eps)?)
    }
}
