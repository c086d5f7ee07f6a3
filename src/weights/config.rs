//! diffusers `config.json` reading. diffusers writes Python's non-standard JSON literals
//! (`-Infinity`, `Infinity`, `NaN`, e.g. `lambda_min_clipped` in scheduler configs); they are
//! mapped to strings before parsing so that serde_json accepts the file, and helpers read them
//! back as floats.

use super::{io_err, WResult, WeightsError};
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

    pub fn opt_usize(&self, key: &str) -> WResult<Option<usize>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .map(|u| Some(u as usize))
                .ok_or_else(|| self.bad(key, "must be a non-negative integer")),
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
    fn wrong_types_name_the_key() {
        let c = JsonConfig::parse(Path::new("c.json"), r#"{"num_layers": "two"}"#).unwrap();
        let e = c.req_usize("num_layers").unwrap_err().to_string();
        assert!(e.contains("num_layers") && e.contains("c.json"), "{e}");
        assert!(JsonConfig::parse(Path::new("c.json"), "[1]").is_err());
        assert!(JsonConfig::parse(Path::new("c.json"), "{").is_err());
    }
}
