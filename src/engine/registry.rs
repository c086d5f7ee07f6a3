//! The registered model families. Adding a family is one line here (see docs/ARCHITECTURE.md,
//! "Adding a model family").

use super::family::{entry, ArchEntry, FamilyEntry, Resolved};
use super::options::ModelSource;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::ModelDir;

/// Every family, in detection order: a folder belongs to the first whose `detect` accepts its
/// transformer config. PixArt comes last: it accepts any config that is not another family's,
/// so that a malformed PixArt config is reported by PixArt's own parser.
static FAMILIES: &[FamilyEntry] = &[
    entry::<crate::families::flux::Flux>(),
    entry::<crate::families::pixart::PixArt>(),
];

pub fn families() -> &'static [FamilyEntry] {
    FAMILIES
}

/// The family and resolved source of `source`.
pub(crate) fn resolve(source: &ModelSource) -> Result<(&'static FamilyEntry, Resolved)> {
    match source {
        ModelSource::Demo => resolve(&ModelSource::Arch("demo".into())),
        ModelSource::Arch(name) => {
            for f in families() {
                if let Some(a) = (f.archs)().iter().find(|a| a.name == name.as_str()) {
                    return Ok((f, Resolved::Arch(a)));
                }
            }
            let names: Vec<&str> = archs().iter().map(|a| a.name).collect();
            Err(Error::invalid(format!(
                "unknown architecture `{name}` (expected one of {})",
                names.join(", ")
            )))
        }
        ModelSource::Dir(path) => {
            let dir = ModelDir::resolve(path)?;
            let cfg = dir.transformer_config()?;
            let f = families()
                .iter()
                .find(|f| (f.detect)(&cfg))
                .ok_or_else(|| {
                    Error::unsupported(format!(
                        "{}: no registered model family recognises this transformer config",
                        dir.transformer.display()
                    ))
                })?;
            Ok((f, Resolved::Dir(path.clone(), dir)))
        }
    }
}

impl ModelDir {
    /// A fingerprint of the transformer config, the scheduler config and the weight files'
    /// names and sizes (a search checkpoint records it).
    pub fn fingerprint(&self) -> Result<String> {
        let mut h = crate::search::genome::Fnv::default();
        let cfg = self.transformer.join("config.json");
        h.update(
            &std::fs::read(&cfg)
                .map_err(|e| Error::new(ErrorKind::Io, format!("{}: {e}", cfg.display())))?,
        );
        if let Some(root) = &self.root {
            let sc = root.join("scheduler").join("scheduler_config.json");
            if let Ok(b) = std::fs::read(&sc) {
                h.update(&b);
            }
        }
        let mut files: Vec<(String, u64)> = std::fs::read_dir(&self.transformer)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("{}: {e}", self.transformer.display()),
                )
            })?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                let len = e.metadata().ok()?.len();
                (n.ends_with(".safetensors") || n.ends_with(".json")).then_some((n, len))
            })
            .collect();
        files.sort();
        for (n, l) in files {
            h.update(n.as_bytes());
            h.update(&l.to_le_bytes());
        }
        Ok(h.hex())
    }
}

/// Every built-in architecture of every registered family.
pub fn archs() -> Vec<&'static ArchEntry> {
    families().iter().flat_map(|f| (f.archs)().iter()).collect()
}
