//! diffusers `config.json` reading. diffusers writes Python's non-standard JSON literals
//! (`-Infinity`, `Infinity`, `NaN`, e.g. `lambda_min_clipped` in scheduler configs); they are
//! mapped to strings before parsing so that serde_json accepts the file, and helpers read them
//! back as floats.

use super::{io_err, WResult, WeightsError};
use crate::util::limits::{self, Limit};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Replaces the bare literals `-Infinity`, `Infinity` and `NaN` outside strings by quoted strings.
pub fn sanitize_json(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    let mut in_str = false;
    while i < bytes.len() {
        let c = bytes[i];
        if in_str {
            out.push(c as char);
            if c == b'\\' && i + 1 < bytes.len() {
                out.push(bytes[i + 1] as char);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_str = true;
            out.push('"');
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let mut matched = false;
        for lit in ["-Infinity", "Infinity", "NaN"] {
            if rest.starts_with(lit) {
                out.push('"');
                out.push_str(lit);
                out.push('"');
                i += lit.len();
                matched = true;
                break;
            }
        }
        if !matched {
            // Multi-byte UTF-8 outside strings cannot occur in valid JSON; copy by char anyway.
            let ch = rest.chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The limit on an integer config key, from its name: layer and block counts
/// ([`limits::LAYERS`]), head counts ([`limits::HEADS`]), vocabulary sizes and token ids
/// ([`limits::VOCAB`]), text lengths ([`limits::TEXT_TOKENS`]), the latent `sample_size`
/// ([`limits::LATENT_SIDE`]), and every other integer (widths, channels, buckets, timestep
/// counts) [`limits::DIM`].
pub fn limit_for_key(key: &str) -> Limit {
    let k = key.to_ascii_lowercase();
    if k.contains("layers") || k.contains("blocks") {
        limits::LAYERS
    } else if k.contains("heads") {
        limits::HEADS
    } else if k.contains("vocab") || k.ends_with("token_id") {
        limits::VOCAB
    } else if k.contains("max_position") || k.contains("max_length") || k.contains("max_sequence") {
        limits::TEXT_TOKENS
    } else if k == "sample_size" {
        limits::LATENT_SIDE
    } else {
        limits::DIM
    }
}

/// A parsed JSON config with the file it came from, for error messages.
#[derive(Clone, Debug)]
pub struct JsonConfig {
    pub path: PathBuf,
    pub map: Map<String, Value>,
}

impl JsonConfig {
    pub fn read(path: &Path) -> WResult<Self> {
        if !path.is_file() {
            return Err(WeightsError::Config {
                path: path.to_path_buf(),
                detail: "file not found".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> WResult<Self> {
        let v: Value =
            serde_json::from_str(&sanitize_json(text)).map_err(|e| WeightsError::Json {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        match v {
            Value::Object(map) => Ok(JsonConfig {
                path: path.to_path_buf(),
                map,
            }),
            _ => Err(WeightsError::Config {
                path: path.to_path_buf(),
                detail: "top level is not a JSON object".into(),
            }),
        }
    }

    fn bad(&self, key: &str, what: &str) -> WeightsError {
        WeightsError::Config {
            path: self.path.clone(),
            detail: format!("`{key}` {what}"),
        }
    }

    /// True when the key is absent or null (diffusers treats both as "use the default").
    pub fn is_unset(&self, key: &str) -> bool {
        matches!(self.map.get(key), None | Some(Value::Null))
    }

    /// An integer that sizes something: absent/null is None; a value over the limit its key
    /// implies ([`limit_for_key`]) is refused, naming the key and the file, before anything is
    /// built from it.
    pub fn opt_usize(&self, key: &str) -> WResult<Option<usize>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let u = v
                    .as_u64()
                    .map(u128::from)
                    .or_else(|| {
                        v.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && f.is_finite())
                            .map(|f| f as u128)
                    })
                    .ok_or_else(|| self.bad(key, "must be a non-negative integer"))?;
                limit_for_key(key)
                    .check(format!("`{key}`"), u)
                    .map(Some)
                    .map_err(|e| self.invalid(e.to_string()))
            }
        }
    }
    pub fn usize_or(&self, key: &str, default: usize) -> WResult<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }
    pub fn req_usize(&self, key: &str) -> WResult<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.bad(key, "is required"))
    }

    pub fn opt_f64(&self, key: &str) -> WResult<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s == "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            Some(Value::String(s)) if s == "Infinity" => Ok(Some(f64::INFINITY)),
            Some(Value::String(s)) if s == "NaN" => Ok(Some(f64::NAN)),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "must be a number")),
        }
    }
    pub fn f64_or(&self, key: &str, default: f64) -> WResult<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub fn opt_bool(&self, key: &str) -> WResult<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(key, "must be true or false")),
        }
    }
    pub fn bool_or(&self, key: &str, default: bool) -> WResult<bool> {
        Ok(self.opt_bool(key)?.unwrap_or(default))
    }

    pub fn opt_str(&self, key: &str) -> WResult<Option<String>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(key, "must be a string")),
        }
    }
    pub fn str_or(&self, key: &str, default: &str) -> WResult<String> {
        Ok(self.opt_str(key)?.unwrap_or_else(|| default.to_string()))
    }

    /// An error about this config, for validation done by model configs.
    pub fn invalid(&self, detail: impl Into<String>) -> WeightsError {
        WeightsError::Config {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals_are_accepted() {
        let text = r#"{"lambda_min_clipped": -Infinity, "a": "x-Infinity\"NaN", "b": NaN, "c": 1}"#;
        let c = JsonConfig::parse(Path::new("s.json"), text).unwrap();
        assert_eq!(
            c.opt_f64("lambda_min_clipped").unwrap(),
            Some(f64::NEG_INFINITY)
        );
        assert!(c.opt_f64("b").unwrap().unwrap().is_nan());
        assert_eq!(c.opt_str("a").unwrap().unwrap(), "x-Infinity\"NaN");
        assert_eq!(c.req_usize("c").unwrap(), 1);
    }

    #[test]
    fn hostile_sizes_are_refused_naming_key_and_file() {
        let c = JsonConfig::parse(
            Path::new("transformer/config.json"),
            r#"{"num_layers": 1000000000, "num_attention_heads": 1e12, "d_model": 18446744073709551615, "vocab_size": 32128, "sample_size": 128}"#,
        )
        .unwrap();
        let e = c.req_usize("num_layers").unwrap_err().to_string();
        assert!(
            e.contains("num_layers") && e.contains("transformer/config.json"),
            "{e}"
        );
        assert!(e.contains("1000000000") && e.contains("512"), "{e}");
        assert!(c.req_usize("num_attention_heads").is_err());
        assert!(c.req_usize("d_model").is_err());
        assert_eq!(c.req_usize("vocab_size").unwrap(), 32128);
        assert_eq!(c.req_usize("sample_size").unwrap(), 128);
    }

    #[test]
    fn wrong_types_name_the_key() {
        let c = JsonConfig::parse(Path::new("c.json"), r#"{"num_layers": "two"}"#).unwrap();
        let e = c.req_usize("num_layers").unwrap_err().to_string();
        assert!(e.contains("num_layers") && e.contains("c.json"), "{e}");
        assert!(JsonConfig::parse(Path::new("c.json"), "[1]").is_err());
        assert!(JsonConfig::parse(Path::new("c.json"), "{").is_err());
    }
}
