//! The working-memory check a run passes before it starts: the estimate of
//! [`crate::cache::macs::activation_bytes`] (from the shapes) against the memory that is free on
//! the run's device, refused with both figures when it cannot fit.

#[cfg(test)]
use crate::cache::macs::activation_bytes;
use crate::cache::macs::{activation_bytes_with, CacheExtra, ModelDims};
use crate::cache::schedule::Schedule;
use crate::error::{Error, Result};

/// What the check knows of the model and the device (a copy, so the search can take it along).
#[derive(Clone, Debug)]
pub(crate) struct MemoryCheck {
    pub dims: ModelDims,
    /// The device name the message gives (`cpu`, `cuda:0`).
    pub device: String,
    /// Bytes free on the device when the check was made (`None`: unknown, nothing is refused).
    pub available: Option<u64>,
}

/// One run's shape, as the estimate takes it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunShape {
    /// Images evaluated together (one transformer batch, before CFG doubles it).
    pub images: u64,
    /// Image tokens per image (after patching).
    pub image_tokens: u64,
    pub text_len: u64,
    /// Classifier-free guidance (two transformer rows per image).
    pub cfg: bool,
    /// Bytes the run holds besides the transformer's working set (a search's prefix cache).
    pub extra: u64,
    /// What the component cache holds besides the components' outputs.
    pub cache: CacheExtra,
}

/// The cache state of the schedules a run may use.
pub(crate) struct CacheShape;

impl CacheShape {
    /// The largest forecast order and whether any runtime policy is among `schedules`.
    pub fn of(schedules: &[&Schedule]) -> CacheExtra {
        CacheExtra {
            forecast_order: schedules
                .iter()
                .filter_map(|s| s.forecast.map(|f| f.order() as u64))
                .max()
                .unwrap_or(0),
            runtime_policy: schedules.iter().any(|s| s.runtime.is_some()),
        }
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

impl MemoryCheck {
    /// Refuses `shape` when its estimate exceeds the free memory; `what` names the run in the
    /// message ("4 image(s) at 1024x1024 px").
    pub fn check(&self, what: &str, shape: RunShape) -> Result<()> {
        let need = activation_bytes_with(
            &self.dims,
            shape.images,
            shape.image_tokens,
            shape.text_len,
            shape.cfg,
            shape.cache,
        )
        .and_then(|n| n.checked_add(shape.extra));
        let Some(need) = need else {
            return Err(Error::invalid(format!(
                "{what}: the working memory does not fit in 64 bits"
            )));
        };
        if let Some(free) = self.available {
            if need > free {
                return Err(Error::invalid(format!(
                    "{what} needs at least {:.1} GiB of working memory, {:.1} GiB is available on {}; use fewer images or a smaller size",
                    gib(need),
                    gib(free),
                    self.device
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::macs::PixArtDims;

    fn shape(images: u64, extra: u64) -> RunShape {
        RunShape {
            images,
            image_tokens: 256,
            text_len: 120,
            cfg: true,
            extra,
            cache: CacheExtra::default(),
        }
    }

    #[test]
    fn refuses_only_what_does_not_fit() {
        let dims = ModelDims::PixArt(PixArtDims::pixart_xl_2_256());
        let one = activation_bytes(&dims, 1, 256, 120, true).unwrap();
        let check = MemoryCheck {
            dims,
            device: "cpu".into(),
            available: Some(4 * one),
        };
        check.check("x", shape(4, 0)).unwrap();
        let e = check
            .check("5 images", shape(5, 0))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("5 images needs at least") && e.contains("on cpu"),
            "{e}"
        );
        // The extra bytes count too.
        assert!(check.check("x", shape(4, 1)).is_err());
        assert!(check.check("x", shape(u64::MAX, 0)).is_err());
        let unknown = MemoryCheck {
            available: None,
            ..check
        };
        unknown.check("x", shape(1 << 20, 0)).unwrap();
    }
}
