//! Manifests of known checkpoints (weights-manifest/*.json, embedded at build time) and the
//! validation behind `ecad-native weights check`.

use super::{WResult, WeightStore, WeightsError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One known checkpoint: its transformer config.json values and every tensor's name and shape.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub repo: String,
    /// The transformer config.json as released (keys that matter for the architecture).
    pub config: serde_json::Map<String, serde_json::Value>,
    /// `[name, shape]` in checkpoint order.
    pub tensors: Vec<(String, Vec<usize>)>,
    /// The tensors whose dtype is not a float one, with their torch dtype (`int64`): ImageReward's
    /// `position_ids` buffer. Every other tensor must be F32, F16 or BF16.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dtypes: BTreeMap<String, String>,
}

impl Manifest {
    /// The config's `model_type`, when it has one (`image_reward` for ImageReward).
    pub fn model_type(&self) -> Option<&str> {
        self.config.get("model_type").and_then(|v| v.as_str())
    }

    /// An ImageReward checkpoint (not a diffusion transformer).
    pub fn is_image_reward(&self) -> bool {
        self.model_type() == Some(IMAGE_REWARD_MODEL_TYPE)
    }
}

/// The `model_type` of an ImageReward folder's config.json (tools/convert/imagereward_to_safetensors.py).
pub const IMAGE_REWARD_MODEL_TYPE: &str = "image_reward";

/// The manifests shipped in weights-manifest/.
pub const MANIFEST_SOURCES: &[(&str, &str)] = &[
    (
        "PixArt-XL-2-256x256",
        include_str!("../../weights-manifest/PixArt-XL-2-256x256.json"),
    ),
    (
        "PixArt-XL-2-512x512",
        include_str!("../../weights-manifest/PixArt-XL-2-512x512.json"),
    ),
    (
        "PixArt-XL-2-1024-MS",
        include_str!("../../weights-manifest/PixArt-XL-2-1024-MS.json"),
    ),
    (
        "PixArt-Sigma-XL-2-256x256",
        include_str!("../../weights-manifest/PixArt-Sigma-XL-2-256x256.json"),
    ),
    (
        "PixArt-Sigma-XL-2-512-MS",
        include_str!("../../weights-manifest/PixArt-Sigma-XL-2-512-MS.json"),
    ),
    (
        "PixArt-Sigma-XL-2-1024-MS",
        include_str!("../../weights-manifest/PixArt-Sigma-XL-2-1024-MS.json"),
    ),
    (
        "PixArt-Sigma-XL-2-2K-MS",
        include_str!("../../weights-manifest/PixArt-Sigma-XL-2-2K-MS.json"),
    ),
    (
        "FLUX.1-dev",
        include_str!("../../weights-manifest/FLUX.1-dev.json"),
    ),
    (
        "FLUX.1-schnell",
        include_str!("../../weights-manifest/FLUX.1-schnell.json"),
    ),
    (
        "ImageReward-v1.0",
        include_str!("../../weights-manifest/ImageReward-v1.0.json"),
    ),
];

pub fn manifests() -> Vec<Manifest> {
    MANIFEST_SOURCES
        .iter()
        .map(|(n, s)| {
            serde_json::from_str(s)
                .unwrap_or_else(|e| panic!("embedded manifest {n} is invalid: {e}"))
        })
        .collect()
}

/// Outcome of a successful check.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The known checkpoint the folder matched, if any.
    pub matched: Option<String>,
    pub tensors: usize,
    pub parameters: u64,
    pub dtypes: BTreeMap<String, usize>,
}

/// Validates a tensor store against an expected list: every expected tensor present with its
/// shape and a float dtype, and no unexpected tensor.
pub fn check_store(store: &WeightStore, expected: &[(String, Vec<usize>)]) -> WResult<CheckReport> {
    check_store_dtypes(store, expected, &BTreeMap::new())
}

/// The safetensors dtype of a torch dtype name in a manifest's `dtypes`.
fn safetensors_dtype(torch: &str) -> Option<(safetensors::Dtype, &'static str)> {
    use safetensors::Dtype;
    Some(match torch {
        "int64" => (Dtype::I64, "I64"),
        "int32" => (Dtype::I32, "I32"),
        "bool" => (Dtype::BOOL, "BOOL"),
        _ => return None,
    })
}

/// [`check_store`] where the tensors named in `dtypes` must have that (non-float) torch dtype
/// instead of a float one; they do not count as parameters.
pub fn check_store_dtypes(
    store: &WeightStore,
    expected: &[(String, Vec<usize>)],
    dtypes: &BTreeMap<String, String>,
) -> WResult<CheckReport> {
    let mut dtypes_seen = BTreeMap::new();
    let mut params = 0u64;
    for (name, shape) in expected {
        let info = store
            .info(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                dir: store.dir().to_path_buf(),
                name: name.clone(),
                expected: format!(" (expected shape {shape:?})"),
            })?;
        let path = store.file_of(name).unwrap_or(store.dir()).to_path_buf();
        if &info.shape != shape {
            return Err(WeightsError::ShapeMismatch {
                path,
                name: name.clone(),
                expected: shape.clone(),
                actual: info.shape.clone(),
            });
        }
        use safetensors::Dtype;
        if let Some(torch) = dtypes.get(name) {
            let (want, allowed) = safetensors_dtype(torch).ok_or_else(|| WeightsError::Layout {
                path: path.clone(),
                detail: format!("the manifest gives `{name}` the unknown dtype `{torch}`"),
            })?;
            if info.dtype != want {
                return Err(WeightsError::BadDtype {
                    path,
                    name: name.clone(),
                    dtype: format!("{:?}", info.dtype),
                    allowed,
                });
            }
            *dtypes_seen.entry(format!("{:?}", info.dtype)).or_insert(0) += 1;
            continue;
        }
        if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(WeightsError::BadDtype {
                path,
                name: name.clone(),
                dtype: format!("{:?}", info.dtype),
                allowed: "F32, F16, BF16",
            });
        }
        *dtypes_seen.entry(format!("{:?}", info.dtype)).or_insert(0) += 1;
        params += shape.iter().product::<usize>() as u64;
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(extra) = store.names().find(|n| !known.contains(n.as_str())) {
        return Err(WeightsError::ExtraTensor {
            dir: store.dir().to_path_buf(),
            name: extra.clone(),
            shape: store
                .info(extra)
                .map(|i| i.shape.clone())
                .unwrap_or_default(),
        });
    }
    Ok(CheckReport {
        matched: None,
        tensors: expected.len(),
        parameters: params,
        dtypes: dtypes_seen,
    })
}
