//! Reading checkpoints: safetensors files by mmap (single or sharded through an index json),
//! tensors as stored (typed views of the mapping) or converted to f32, diffusers config.json
//! parsing and the weights manifests.

pub mod config;
pub mod manifest;

use crate::backend::{WeightDtype, WeightView};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Everything that can go wrong reading a user's files. Each variant names the file and, where
/// relevant, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file ({detail})")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: invalid JSON: {detail}")]
    Json { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("{dir}: missing tensor `{name}`{expected}")]
    MissingTensor {
        dir: PathBuf,
        name: String,
        expected: String,
    },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {dtype}, expected one of {allowed}")]
    BadDtype {
        path: PathBuf,
        name: String,
        dtype: String,
        allowed: &'static str,
    },
    #[error("{dir}: unexpected tensor `{name}` (shape {shape:?}) not used by this model")]
    ExtraTensor {
        dir: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    #[error("{path}: {detail}")]
    Layout { path: PathBuf, detail: String },
}

pub type WResult<T> = Result<T, WeightsError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The bytes of one safetensors file: a read-only mapping, or a buffer the caller handed over.
enum ShardBytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for ShardBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ShardBytes::Map(m) => m,
            ShardBytes::Owned(v) => v,
        }
    }
}

/// One safetensors file. The header is parsed once; tensor data stays in the mapping.
struct Shard {
    path: PathBuf,
    mmap: ShardBytes,
}

/// Metadata of one tensor in a [`WeightStore`].
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    shard: usize,
    /// Byte range of the data inside the shard's mapping (from the header, parsed once).
    start: usize,
    end: usize,
}

/// A set of safetensors files seen as one name → tensor map.
pub struct WeightStore {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl WeightStore {
    /// Opens the weights of a diffusers model folder: `{stem}.safetensors`, or the shards listed
    /// in `{stem}.safetensors.index.json`.
    pub fn open_dir(dir: &Path, stem: &str) -> WResult<Self> {
        let single = dir.join(format!("{stem}.safetensors"));
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        if single.is_file() {
            return Self::open_files(dir, &[single]);
        }
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
            let (files, names) = parse_index(&index, &text)?;
            let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
            let store = Self::open_files(dir, &paths)?;
            for name in &names {
                if !store.tensors.contains_key(name) {
                    return Err(WeightsError::MissingTensor {
                        dir: dir.to_path_buf(),
                        name: name.clone(),
                        expected: format!(" (listed in {})", index.display()),
                    });
                }
            }
            return Ok(store);
        }
        Err(WeightsError::Layout {
            path: dir.to_path_buf(),
            detail: format!(
                "no weights found: expected {stem}.safetensors or {stem}.safetensors.index.json"
            ),
        })
    }

    /// Opens explicit safetensors files (used by tests and by `open_dir`).
    pub fn open_files(dir: &Path, paths: &[PathBuf]) -> WResult<Self> {
        let mut store = WeightStore {
            dir: dir.to_path_buf(),
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for path in paths {
            let file = File::open(path).map_err(io_err(path))?;
            // SAFETY: the file is opened read-only; concurrent external truncation of a
            // checkpoint while it is in use is outside what this engine defends against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
            store.add_shard(path, ShardBytes::Map(mmap))?;
        }
        Ok(store)
    }

    /// A store over one safetensors file already in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> WResult<Self> {
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut store = WeightStore {
            dir,
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        store.add_shard(path, ShardBytes::Owned(bytes))?;
        Ok(store)
    }

    /// Parses one file's header and records its tensors (names unique across shards).
    fn add_shard(&mut self, path: &Path, bytes: ShardBytes) -> WResult<()> {
        let si = self.shards.len();
        let st = SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let base = bytes.as_ptr() as usize;
        for (name, view) in st.tensors() {
            let start = view.data().as_ptr() as usize - base;
            if self.tensors.contains_key(&name) {
                return Err(WeightsError::Layout {
                    path: path.to_path_buf(),
                    detail: format!("tensor `{name}` appears in more than one shard"),
                });
            }
            self.tensors.insert(
                name,
                TensorInfo {
                    shape: view.shape().to_vec(),
                    dtype: view.dtype(),
                    shard: si,
                    start,
                    end: start + view.data().len(),
                },
            );
        }
        drop(st);
        self.shards.push(Shard {
            path: path.to_path_buf(),
            mmap: bytes,
        });
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// Path of the file holding `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensors
            .get(name)
            .map(|i| self.shards[i.shard].path.as_path())
    }

    /// Reads a weight as f32, checking its shape. Accepts F32, F16 and BF16 on disk.
    pub fn get_f32(&self, name: &str, expected: &[usize]) -> WResult<Vec<f32>> {
        Ok(self.get_view(name, expected)?.into_f32())
    }

    /// A weight as stored (F32, F16 or BF16 bytes borrowed from the mapping), checking its
    /// shape.
    pub fn get_view(&self, name: &str, expected: &[usize]) -> WResult<WeightView<'_>> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
                expected: format!(" (expected shape {expected:?})"),
            })?;
        let shard = &self.shards[info.shard];
        if info.shape != expected {
            return Err(WeightsError::ShapeMismatch {
                path: shard.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: info.shape.clone(),
            });
        }
        let dtype = weight_dtype(info.dtype).ok_or_else(|| WeightsError::BadDtype {
            path: shard.path.clone(),
            name: name.to_string(),
            dtype: format!("{:?}", info.dtype),
            allowed: "F32, F16, BF16",
        })?;
        let bytes = shard
            .mmap
            .get(info.start..info.end)
            .ok_or_else(|| WeightsError::Corrupt {
                path: shard.path.clone(),
                detail: format!("tensor `{name}` lies outside the file"),
            })?;
        Ok(WeightView::Stored { dtype, bytes })
    }
}

/// Reads a sharded checkpoint's `*.safetensors.index.json`: the shard file names (sorted, each
/// once) and the tensor names of its `weight_map`. A shard name must be a plain file name in
/// the index's folder: a path (`../x`, `/etc/x`, `a/b`) is refused, so an index cannot make the
/// engine open files elsewhere.
pub fn parse_index(index: &Path, text: &str) -> WResult<(Vec<String>, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| WeightsError::Json {
        path: index.to_path_buf(),
        detail: e.to_string(),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| WeightsError::Config {
            path: index.to_path_buf(),
            detail: "no `weight_map` object".into(),
        })?;
    let mut files = Vec::new();
    for (name, f) in map {
        let f = f.as_str().ok_or_else(|| WeightsError::Config {
            path: index.to_path_buf(),
            detail: format!("`weight_map` entry `{name}` is not a file name"),
        })?;
        let plain = !f.is_empty()
            && f != "."
            && f != ".."
            && !f.contains(['/', '\\', '\0'])
            && Path::new(f).file_name().is_some_and(|n| n == f);
        if !plain {
            return Err(WeightsError::Config {
                path: index.to_path_buf(),
                detail: format!(
                    "`weight_map` entry `{name}` names `{f}`: shards must be plain file names in the index's folder"
                ),
            });
        }
        files.push(f.to_string());
    }
    files.sort();
    files.dedup();
    Ok((files, map.keys().cloned().collect()))
}

/// The weight dtype of a safetensors float dtype (F32, BF16, F16); `None` for the others.
fn weight_dtype(dtype: Dtype) -> Option<WeightDtype> {
    match dtype {
        Dtype::F32 => Some(WeightDtype::F32),
        Dtype::BF16 => Some(WeightDtype::Bf16),
        Dtype::F16 => Some(WeightDtype::F16),
        _ => None,
    }
}

/// Converts little-endian tensor bytes to f32 (floats as [`WeightView::into_f32`] widens
/// weights). With `allow_ints`, I64/I32 (timesteps, masks, ids), U8 (images) and F64 are
/// accepted too. Returns None for unsupported dtypes.
pub fn bytes_to_f32(dtype: Dtype, data: &[u8], allow_ints: bool) -> Option<Vec<f32>> {
    fn chunks<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        data.chunks_exact(N).map(|c| c.try_into().unwrap())
    }
    if let Some(dtype) = weight_dtype(dtype) {
        return Some(WeightView::Stored { dtype, bytes: data }.into_f32());
    }
    Some(match dtype {
        Dtype::F64 if allow_ints => chunks::<8>(data)
            .map(|b| f64::from_le_bytes(b) as f32)
            .collect(),
        Dtype::I64 if allow_ints => chunks::<8>(data)
            .map(|b| i64::from_le_bytes(b) as f32)
            .collect(),
        Dtype::I32 if allow_ints => chunks::<4>(data)
            .map(|b| i32::from_le_bytes(b) as f32)
            .collect(),
        Dtype::U8 if allow_ints => data.iter().map(|&b| b as f32).collect(),
        _ => return None,
    })
}

/// A named host tensor read from an inputs file.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Reads every tensor of a safetensors inputs file into f32 host tensors (floats of any width,
/// and I64/I32 for timesteps, masks and ids).
pub fn read_inputs(path: &Path) -> WResult<BTreeMap<String, HostTensor>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = bytes_to_f32(view.dtype(), view.data(), true).ok_or_else(|| {
            WeightsError::BadDtype {
                path: path.to_path_buf(),
                name: name.clone(),
                dtype: format!("{:?}", view.dtype()),
                allowed: "F32, F64, F16, BF16, I64, I32, U8",
            }
        })?;
        out.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Writes f32 tensors to `path` atomically (temp file in the same folder, then rename), so a
/// failure never leaves a partial file at the output path.
pub fn write_outputs(path: &Path, tensors: &[(&str, &HostTensor)]) -> WResult<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            let view = safetensors::tensor::TensorView::new(
                Dtype::F32,
                t.shape.clone(),
                bytemuck::cast_slice(&t.data),
            )
            .map_err(|e| WeightsError::Corrupt {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
            Ok((n.to_string(), view))
        })
        .collect::<WResult<_>>()?;
    let bytes = safetensors::tensor::serialize(views, None).map_err(|e| WeightsError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    atomic_write(path, &bytes)
}

/// [`crate::util::atomic_write`] (write-then-rename in the destination folder, flushed to
/// disk), its error as a [`WeightsError::Io`] naming `path`.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> WResult<()> {
    Ok(crate::util::atomic_write(path, bytes)?)
}

impl From<crate::util::WriteError> for WeightsError {
    fn from(e: crate::util::WriteError) -> Self {
        WeightsError::Io {
            path: e.path,
            source: e.source,
        }
    }
}
