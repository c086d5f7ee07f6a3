//! Prompt tokenization for the T5 text encoder, as the PixArt pipelines do it.
//!
//! The encoding itself is Hugging Face's `tokenizers` (the library behind transformers'
//! `T5Tokenizer`). PixArt checkpoints ship `tokenizer/spiece.model` (a SentencePiece model) and no
//! `tokenizer.json`, so a tokenizer folder is read as follows:
//!
//! 1. `tokenizer.json` present: used as is (any truncation/padding it configures is ignored).
//! 2. Otherwise `spiece.model` is converted once, the way transformers 5 builds `T5Tokenizer`
//!    from it: the SentencePiece protobuf is parsed here (a few fields, no protobuf dependency),
//!    giving a Unigram model over the pieces and their scores (unk id from the trainer spec), the
//!    model's precompiled NFKC charsmap as normalizer, `WhitespaceSplit` + `Metaspace("▁",
//!    prepend always)` as pre-tokenizer, and the added special tokens `<pad>`, `</s>`, `<unk>`,
//!    SentencePiece control/user pieces and `<extra_id_{99..0}>` (ids after the pieces, so
//!    `<extra_id_0>` is the last id, as in T5). The result is cached as JSON in the cache folder
//!    (see [`crate::util::cache_dir`]) under a name derived from the hash of `spiece.model`, and
//!    later runs load the cache. A cache that cannot be written is not an error.
//!
//! PixArt's preprocessing (`clean_caption=False`): `text.lower().strip()` with Python's
//! semantics; then `ids = encode(text)[:L-1] + [</s>]`, padded with `<pad>` = 0 to `L`, and the
//! mask covers the real tokens and the EOS (`""` → `[1, 0, …]`, one valid token).

use crate::util::limits;
use std::path::{Path, PathBuf};
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::Precompiled;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};

/// T5's fixed special ids.
pub const PAD_ID: u32 = 0;
pub const EOS_ID: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("{path}: no tokenizer found: expected tokenizer.json or spiece.model")]
    Missing { path: PathBuf },
    #[error("tokenizing {text:?}: {detail}")]
    Encode { text: String, detail: String },
}

pub type TResult<T> = Result<T, TokenizerError>;

pub(crate) fn invalid(path: &Path, detail: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// One tokenized prompt, padded to the sequence length.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizedPrompt {
    /// `L` ids: real ids, EOS, then pads.
    pub ids: Vec<u32>,
    /// `L` values, 1 for the real ids and the EOS.
    pub mask: Vec<f32>,
    /// Number of valid positions (real ids + EOS).
    pub valid: usize,
    /// How many ids were cut by truncation (0 when the prompt fits).
    pub truncated: usize,
}

/// The T5 tokenizer with PixArt's preprocessing.
pub struct T5Tokenizer {
    inner: Tokenizer,
}

/// Python's `str.isspace` (Unicode White_Space plus the ASCII separators U+001C–U+001F).
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// PixArt's `_text_preprocessing` with `clean_caption=False`: `text.lower().strip()`.
pub fn pixart_preprocess(text: &str) -> String {
    text.to_lowercase().trim_matches(py_isspace).to_string()
}

/// The ids of `text` with no special tokens and no truncation (both tokenizers' `encode_raw`).
///
/// The tokenizer files are validated at load (see [`validate_charsmap`]), so `tokenizers` should
/// not panic here; a panic that still comes out of it (a defect in that library on some other
/// malformed file) is caught and returned as an error instead of unwinding into the caller.
pub(crate) fn encode_ids(inner: &tokenizers::Tokenizer, text: &str) -> TResult<Vec<u32>> {
    let encoded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.encode(text, false)));
    let enc = match encoded {
        Ok(Ok(enc)) => enc,
        Ok(Err(e)) => return Err(encode_error(text, e.to_string())),
        Err(_) => {
            return Err(encode_error(
                text,
                "the tokenizer library failed on this text (malformed tokenizer files?)",
            ))
        }
    };
    Ok(enc.get_ids().to_vec())
}

/// `tokenizer(text, padding="max_length", max_length=L, truncation=True)` around ids already
/// encoded without specials: `first`, the first `L − 2` ids, `last`, then `pad` up to `L`; the
/// mask covers `first`…`last`. `specials` = `[first, last, pad]`; `names` says which in errors.
pub(crate) fn frame_padded(
    text: &str,
    raw: Vec<u32>,
    specials: [u32; 3],
    max_len: usize,
    names: &str,
) -> TResult<TokenizedPrompt> {
    let [first, last, pad] = specials;
    if let Err(e) = limits::TEXT_TOKENS.check("max_length", max_len as u128) {
        return Err(encode_error(text, e.to_string()));
    }
    if max_len < 2 {
        return Err(encode_error(
            text,
            format!("max_length {max_len} leaves no room for {names}"),
        ));
    }
    let keep = raw.len().min(max_len - 2);
    let mut ids = Vec::with_capacity(max_len);
    ids.push(first);
    ids.extend_from_slice(&raw[..keep]);
    ids.push(last);
    let valid = ids.len();
    ids.resize(max_len, pad);
    let mut mask = vec![0f32; max_len];
    mask[..valid].iter_mut().for_each(|m| *m = 1.0);
    Ok(TokenizedPrompt {
        ids,
        mask,
        valid,
        truncated: raw.len() - keep,
    })
}

/// An [`TokenizerError::Encode`] that quotes at most the first 60 characters of the text, so
/// that a long prompt is not echoed back whole.
pub(crate) fn encode_error(text: &str, detail: impl Into<String>) -> TokenizerError {
    TokenizerError::Encode {
        text: crate::util::quote_start(text, 60),
        detail: detail.into(),
    }
}

impl T5Tokenizer {
    /// Reads a tokenizer folder (`tokenizer.json`, else `spiece.model` converted and cached).
    pub fn from_dir(dir: &Path) -> TResult<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_json_file(&json);
        }
        let spm = dir.join("spiece.model");
        if spm.is_file() {
            let bytes = std::fs::read(&spm).map_err(|e| TokenizerError::Io {
                path: spm.clone(),
                source: e,
            })?;
            let extra = extra_ids_of(dir)?;
            return Self::from_spiece_cached(&spm, &bytes, extra);
        }
        Err(TokenizerError::Missing {
            path: dir.to_path_buf(),
        })
    }

    pub fn from_json_file(path: &Path) -> TResult<Self> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_json_bytes(path, &bytes)
    }

    pub fn from_json_bytes(path: &Path, bytes: &[u8]) -> TResult<Self> {
        // A first pass as plain JSON: `tokenizers` parses some parts (the decoder) through an
        // intermediate value and panics (`expect`) where that fails, e.g. on invalid UTF-8 in a
        // string (found by fuzzing, fuzz/artifacts/tokenizer/regression-decoder-utf8). Any other
        // panic while it builds the tokenizer is caught and refused the same way.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map_err(|e| invalid(path, format!("tokenizer.json: not valid JSON: {e}")))?;
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(bytes)).map_err(|_| {
            invalid(
                path,
                "tokenizer.json: malformed (the tokenizer library failed on it)",
            )
        })?;
        let mut inner = parsed.map_err(|e| invalid(path, format!("tokenizer.json: {e}")))?;
        validate_normalizer(&inner).map_err(|e| invalid(path, format!("tokenizer.json: {e}")))?;
        inner
            .with_truncation(None)
            .map_err(|e| invalid(path, e.to_string()))?;
        inner.with_padding(None);
        Ok(T5Tokenizer { inner })
    }

    /// Converts a SentencePiece model, using (and filling) the JSON cache.
    fn from_spiece_cached(path: &Path, bytes: &[u8], extra_ids: usize) -> TResult<Self> {
        let cached = crate::util::cache_dir().map(|d| {
            d.join("tokenizers").join(format!(
                "t5-v1-{:016x}-x{extra_ids}.json",
                crate::util::fnv1a(bytes) ^ bytes.len() as u64
            ))
        });
        if let Some(c) = &cached {
            if let Ok(b) = std::fs::read(c) {
                if let Ok(t) = Self::from_json_bytes(c, &b) {
                    return Ok(t);
                }
            }
        }
        let t = Self::from_spiece_bytes(path, bytes, extra_ids)?;
        if let Some(c) = &cached {
            // Best effort: a read-only or missing cache folder only costs a conversion next time.
            let _ = t.save_json(c);
        }
        Ok(t)
    }

    /// Builds the tokenizer from the bytes of a `spiece.model` (no cache).
    pub fn from_spiece_bytes(path: &Path, bytes: &[u8], extra_ids: usize) -> TResult<Self> {
        limits::VOCAB
            .check("`extra_ids`", extra_ids as u128)
            .map_err(|e| invalid(path, e.to_string()))?;
        let sp = SpModel::parse(bytes).map_err(|e| invalid(path, format!("spiece.model: {e}")))?;
        if sp.model_type != 1 {
            return Err(invalid(
                path,
                format!(
                    "spiece.model: model type {} is not supported (T5 uses a Unigram model, type 1)",
                    sp.model_type
                ),
            ));
        }
        let n = sp.pieces.len();
        limits::VOCAB
            .check("the number of pieces", n as u128)
            .map_err(|e| invalid(path, format!("spiece.model: {e}")))?;
        if let Some((i, p)) = sp
            .pieces
            .iter()
            .enumerate()
            .find(|(_, p)| !p.score.is_finite())
        {
            return Err(invalid(
                path,
                format!(
                    "spiece.model: piece {i} ({:?}) has score {}",
                    p.piece, p.score
                ),
            ));
        }
        if sp.unk_id >= n {
            return Err(invalid(
                path,
                format!("spiece.model: unk id {} outside {n} pieces", sp.unk_id),
            ));
        }
        let vocab: Vec<(String, f64)> = sp
            .pieces
            .iter()
            .map(|p| (p.piece.clone(), p.score as f64))
            .collect();
        let model = Unigram::from(vocab, Some(sp.unk_id), sp.byte_fallback)
            .map_err(|e| invalid(path, format!("spiece.model: {e}")))?;
        let mut inner = Tokenizer::new(model);
        if !sp.precompiled_charsmap.is_empty() {
            validate_charsmap(&sp.precompiled_charsmap)
                .map_err(|e| invalid(path, format!("spiece.model charsmap: {e}")))?;
            let pc = Precompiled::from(&sp.precompiled_charsmap)
                .map_err(|e| invalid(path, format!("spiece.model charsmap: {e}")))?;
            inner.with_normalizer(Some(pc));
        }
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            WhitespaceSplit.into(),
            Metaspace::new('▁', PrependScheme::Always, true).into(),
        ])));
        inner.with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));
        // Added tokens in transformers' order: SentencePiece control (special) and user-defined
        // pieces, the three named specials, then the sentinels, last id = <extra_id_0>.
        let mut added: Vec<AddedToken> = sp
            .pieces
            .iter()
            .filter(|p| p.kind == 3 || p.kind == 4)
            .map(|p| AddedToken::from(p.piece.clone(), p.kind == 3))
            .collect();
        for s in ["<pad>", "</s>", "<unk>"] {
            if sp.pieces.iter().any(|p| p.piece == s) {
                added.push(AddedToken::from(s, true));
            }
        }
        inner.add_special_tokens(&added);
        let extras: Vec<AddedToken> = (0..extra_ids)
            .rev()
            .map(|i| AddedToken::from(format!("<extra_id_{i}>"), true))
            .collect();
        inner.add_special_tokens(&extras);
        for (id, s) in [(PAD_ID, "<pad>"), (EOS_ID, "</s>")] {
            if inner.token_to_id(s) != Some(id) {
                return Err(invalid(
                    path,
                    format!("spiece.model: `{s}` must have id {id} (T5 layout)"),
                ));
            }
        }
        Ok(T5Tokenizer { inner })
    }

    /// Writes the tokenizer as `tokenizer.json` to `path` (atomically).
    pub fn save_json(&self, path: &Path) -> TResult<()> {
        let io = |e: std::io::Error| TokenizerError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let text = self
            .inner
            .to_string(false)
            .map_err(|e| invalid(path, e.to_string()))?;
        crate::util::atomic_write(path, text.as_bytes()).map_err(|e| invalid(path, e.to_string()))
    }

    /// Vocabulary size including added tokens (must not exceed the encoder's embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text` without special tokens and without truncation.
    pub fn encode_raw(&self, text: &str) -> TResult<Vec<u32>> {
        encode_ids(&self.inner, text)
    }

    /// Decodes ids back to text (for the truncation warning).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    /// `tokenizer(text, padding="max_length", max_length=L, truncation=True)` on already
    /// preprocessed text.
    pub fn encode_padded(&self, text: &str, max_len: usize) -> TResult<TokenizedPrompt> {
        if let Err(e) = limits::TEXT_TOKENS.check("max_length", max_len as u128) {
            return Err(encode_error(text, e.to_string()));
        }
        let raw = self.encode_raw(text)?;
        let keep = raw.len().min(max_len.saturating_sub(1));
        let mut ids = raw[..keep].to_vec();
        ids.push(EOS_ID);
        let valid = ids.len();
        ids.resize(max_len.max(valid), PAD_ID);
        let mut mask = vec![0f32; ids.len()];
        mask[..valid].iter_mut().for_each(|m| *m = 1.0);
        Ok(TokenizedPrompt {
            ids,
            mask,
            valid,
            truncated: raw.len() - keep,
        })
    }

    /// PixArt's full text path: preprocess, then [`Self::encode_padded`].
    pub fn encode_prompt(&self, prompt: &str, max_len: usize) -> TResult<TokenizedPrompt> {
        self.encode_padded(&pixart_preprocess(prompt), max_len)
    }
}

/// `extra_ids` from `tokenizer_config.json` (T5 default 100).
fn extra_ids_of(dir: &Path) -> TResult<usize> {
    let p = dir.join("tokenizer_config.json");
    if !p.is_file() {
        return Ok(100);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| TokenizerError::Io {
        path: p.clone(),
        source: e,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(&p, format!("invalid JSON: {e}")))?;
    let n = match v.get("extra_ids") {
        Some(x @ serde_json::Value::Number(_)) => x
            .as_u64()
            .map(u128::from)
            .or_else(|| {
                x.as_f64()
                    .filter(|f| f.is_finite() && f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u128)
            })
            .ok_or_else(|| {
                invalid(
                    &p,
                    format!("`extra_ids` must be a non-negative integer, got {x}"),
                )
            })?,
        _ => 100,
    };
    limits::VOCAB
        .check("`extra_ids`", n)
        .map_err(|e| invalid(&p, e.to_string()))
}

// ---- validation of SentencePiece's precompiled charsmap ----------------------------------------

/// Checks every precompiled charsmap in a loaded tokenizer's normalizer (a `tokenizer.json` may
/// carry one, alone or inside a `Sequence`), as [`validate_charsmap`] does for `spiece.model`.
fn validate_normalizer(t: &Tokenizer) -> Result<(), String> {
    let Some(norm) = t.get_normalizer() else {
        return Ok(());
    };
    let value = serde_json::to_value(norm).map_err(|e| e.to_string())?;
    let mut stack = vec![&value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(b64)) = map.get("precompiled_charsmap") {
                    let bytes =
                        base64::decode(b64).map_err(|e| format!("precompiled_charsmap: {e}"))?;
                    validate_charsmap(&bytes).map_err(|e| format!("precompiled_charsmap: {e}"))?;
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(())
}

/// Checks that SentencePiece's precompiled charsmap can be used for any input without reading
/// outside its own bytes.
///
/// The format (what `spm_precompiled`, inside `tokenizers`, reads): a little-endian `u32` trie
/// size in bytes, the trie as `u32` units of a darts-clone double array, then the replacement
/// strings, NUL-separated UTF-8. A lookup walks the trie from unit 0 byte by byte (bytes 1..=255)
/// and reads a leaf's value as a byte offset into the strings. `spm_precompiled` indexes the
/// array and the strings without bounds checks, so a corrupt charsmap is accepted at load and then
/// panics on the first text that reaches a bad unit. This walks every path a lookup can take
/// (every reachable node, each of its 255 possible next bytes) and refuses a charsmap where one of
/// them would index outside the trie, or where a leaf points outside the strings or into the
/// middle of a UTF-8 character. Each node is visited once, so the cost is 255 × the nodes: a
/// median of 14.7 ms for T5's 240 kB charsmap (dev-2c, under load), paid once per conversion
/// (the result is cached) or per tokenizer.json load.
pub(crate) fn validate_charsmap(bytes: &[u8]) -> Result<(), String> {
    let size = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("shorter than its 4-byte header")?;
    let units = size / 4;
    let trie_end = units
        .checked_mul(4)
        .and_then(|n| n.checked_add(4))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            format!(
                "trie of {size} bytes is longer than the {}-byte charsmap",
                bytes.len()
            )
        })?;
    let unit = |i: usize| {
        let b = &bytes[4 + 4 * i..8 + 4 * i];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    };
    let strings = std::str::from_utf8(&bytes[trie_end..])
        .map_err(|_| "replacement strings are not UTF-8".to_string())?;
    if units == 0 {
        return Err("empty trie".into());
    }
    // The unit decoding of darts-clone (and spm_precompiled).
    let offset = |u: usize| (u >> 10) << ((u & (1 << 9)) >> 6);
    let label = |u: usize| u & ((1 << 31) | 0xff);
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let value = |u: usize| u & ((1 << 31) - 1);

    let root = offset(unit(0));
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![root];
    while let Some(base) = todo.pop() {
        if !seen.insert(base) {
            continue;
        }
        for c in 1..=255usize {
            let pos = base ^ c;
            if pos >= units {
                return Err(format!(
                    "a lookup reaches unit {pos}, past the trie's {units} units"
                ));
            }
            let u = unit(pos);
            if label(u) != c {
                continue;
            }
            let next = pos ^ offset(u);
            if has_leaf(u) {
                if next >= units {
                    return Err(format!(
                        "a leaf at unit {next}, past the trie's {units} units"
                    ));
                }
                let v = value(unit(next));
                if !strings.is_char_boundary(v) {
                    return Err(format!(
                        "a replacement at byte {v}, outside the {}-byte strings or inside a character",
                        strings.len()
                    ));
                }
            }
            todo.push(next);
        }
    }
    Ok(())
}

// ---- a minimal reader of sentencepiece_model.proto ---------------------------------------------

/// One `ModelProto.SentencePiece`.
#[derive(Clone, Debug)]
struct SpPiece {
    piece: String,
    score: f32,
    /// NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
    kind: u64,
}

/// The fields of `ModelProto` the conversion needs.
#[derive(Debug)]
struct SpModel {
    pieces: Vec<SpPiece>,
    /// TrainerSpec.model_type: UNIGRAM 1, BPE 2, WORD 3, CHAR 4.
    model_type: u64,
    unk_id: usize,
    byte_fallback: bool,
    precompiled_charsmap: Vec<u8>,
}

/// Protobuf wire-format reader over one message.
struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Wire { buf, pos: 0 }
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or("truncated field")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    /// Next `(field number, value)`, or None at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let f = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok(Some((key >> 3, f)))
    }
}

impl SpModel {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut m = SpModel {
            pieces: Vec::new(),
            model_type: 1,
            unk_id: 0,
            byte_fallback: false,
            precompiled_charsmap: Vec::new(),
        };
        let mut w = Wire::new(bytes);
        while let Some((num, f)) = w.next()? {
            match (num, f) {
                (1, Field::Bytes(b)) => m.pieces.push(parse_piece(b)?),
                (2, Field::Bytes(b)) => {
                    let mut t = Wire::new(b);
                    while let Some((n, f)) = t.next()? {
                        match (n, f) {
                            (3, Field::Varint(v)) => m.model_type = v,
                            (35, Field::Varint(v)) => m.byte_fallback = v != 0,
                            (40, Field::Varint(v)) => m.unk_id = v as usize,
                            _ => {}
                        }
                    }
                }
                (3, Field::Bytes(b)) => {
                    let mut t = Wire::new(b);
                    while let Some((n, f)) = t.next()? {
                        if let (2, Field::Bytes(c)) = (n, f) {
                            m.precompiled_charsmap = c.to_vec();
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err("no pieces (not a SentencePiece model?)".into());
        }
        Ok(m)
    }
}

fn parse_piece(b: &[u8]) -> Result<SpPiece, String> {
    let mut p = SpPiece {
        piece: String::new(),
        score: 0.0,
        kind: 1,
    };
    let mut w = Wire::new(b);
    while let Some((n, f)) = w.next()? {
        match (n, f) {
            (1, Field::Bytes(s)) => {
                p.piece = String::from_utf8(s.to_vec()).map_err(|_| "piece is not UTF-8")?
            }
            (2, Field::Fixed32(v)) => p.score = f32::from_bits(v),
            (3, Field::Varint(v)) => p.kind = v,
            _ => {}
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_extra_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tokenizer_config.json");
        for text in [r#"{"extra_ids": 1000000000000}"#, r#"{"extra_ids": 1e12}"#] {
            std::fs::write(&cfg, text).unwrap();
            let e = extra_ids_of(dir.path()).unwrap_err().to_string();
            assert!(
                e.contains("extra_ids") && e.contains("tokenizer_config.json"),
                "{e}"
            );
        }
        std::fs::write(&cfg, r#"{"extra_ids": -3}"#).unwrap();
        assert!(extra_ids_of(dir.path()).is_err());
        std::fs::write(&cfg, r#"{"extra_ids": 100}"#).unwrap();
        assert_eq!(extra_ids_of(dir.path()).unwrap(), 100);
        std::fs::write(&cfg, r#"{"model_max_length": 512}"#).unwrap();
        assert_eq!(extra_ids_of(dir.path()).unwrap(), 100);
        let Err(e) = T5Tokenizer::from_spiece_bytes(&cfg, b"", 1 << 40) else {
            panic!("1 << 40 extra ids accepted");
        };
        assert!(e.to_string().contains("extra_ids"), "{e}");
    }

    #[test]
    fn python_lower_strip() {
        assert_eq!(pixart_preprocess("  A Cat\t\n"), "a cat");
        assert_eq!(pixart_preprocess("\u{1c}x\u{1f}"), "x");
        assert_eq!(pixart_preprocess("ΣΊΣΥΦΟΣ"), "σίσυφος");
        assert_eq!(pixart_preprocess("İ"), "i\u{307}");
        assert_eq!(pixart_preprocess("   "), "");
    }

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(out: &mut Vec<u8>, num: u64, b: &[u8]) {
        varint(out, num << 3 | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    /// A `spiece.model` with T5's special pieces, a few normal pieces with `score`, and
    /// optionally a precompiled charsmap.
    fn spiece_model(score: f32, charsmap: Option<&[u8]>) -> Vec<u8> {
        let pieces = [
            ("<pad>", 0.0, 3),
            ("</s>", 0.0, 3),
            ("<unk>", 0.0, 2),
            ("▁", -1.0, 1),
            ("a", score, 1),
            ("▁a", -1.5, 1),
        ];
        let mut m = Vec::new();
        for (s, sc, kind) in pieces {
            let mut p = Vec::new();
            bytes_field(&mut p, 1, s.as_bytes());
            varint(&mut p, 2 << 3 | 5);
            p.extend_from_slice(&f32::to_bits(sc).to_le_bytes());
            varint(&mut p, 3 << 3);
            varint(&mut p, kind);
            bytes_field(&mut m, 1, &p);
        }
        let mut trainer = Vec::new();
        for (field, v) in [(3, 1), (40, 2)] {
            varint(&mut trainer, field << 3);
            varint(&mut trainer, v);
        }
        bytes_field(&mut m, 2, &trainer);
        if let Some(c) = charsmap {
            let mut n = Vec::new();
            bytes_field(&mut n, 2, c);
            bytes_field(&mut m, 3, &n);
        }
        m
    }

    /// A charsmap whose trie has `units` (after the size header) and then `strings`.
    fn charsmap(units: &[u32], strings: &[u8]) -> Vec<u8> {
        let mut c = ((units.len() * 4) as u32).to_le_bytes().to_vec();
        units
            .iter()
            .for_each(|u| c.extend_from_slice(&u.to_le_bytes()));
        c.extend_from_slice(strings);
        c
    }

    fn real_t5_charsmap() -> Vec<u8> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/spiece.model");
        let sp = SpModel::parse(&std::fs::read(path).unwrap()).unwrap();
        assert!(
            sp.precompiled_charsmap.len() > 1000,
            "the fixture has T5's charsmap"
        );
        sp.precompiled_charsmap
    }

    #[test]
    fn valid_spiece_models_load_and_encode() {
        let p = Path::new("spiece.model");
        let t = T5Tokenizer::from_spiece_bytes(p, &spiece_model(-2.0, None), 2).unwrap();
        assert_eq!(
            t.encode_prompt("a a", 6).unwrap().ids,
            vec![5, 5, 1, 0, 0, 0]
        );
        // T5's real charsmap passes the check, and normalizes as before (NFKC: "ｆ" → "f").
        let real = real_t5_charsmap();
        validate_charsmap(&real).unwrap();
        let t = T5Tokenizer::from_spiece_bytes(p, &spiece_model(-2.0, Some(&real)), 2).unwrap();
        assert_eq!(
            t.encode_prompt("ａ", 4).unwrap().ids,
            t.encode_prompt("a", 4).unwrap().ids
        );
    }

    /// Each of these was accepted before the charsmap check, and then the first encode panicked
    /// inside `spm_precompiled` (index out of bounds).
    #[test]
    fn corrupt_charsmaps_are_refused_at_load() {
        let real = real_t5_charsmap();
        let mut truncated_trie = real.clone();
        // Keep the header's size but cut the trie to a quarter: still parses, indexes past it.
        let size = u32::from_le_bytes(real[..4].try_into().unwrap()) as usize;
        truncated_trie.truncate(4 + size / 4);
        truncated_trie[..4].copy_from_slice(&((size / 4) as u32 & !3).to_le_bytes());
        let mut bad_leaf = real.clone();
        // Point every leaf value past the strings.
        for i in 0..size / 4 {
            let at = 4 + 4 * i;
            let u = u32::from_le_bytes(bad_leaf[at..at + 4].try_into().unwrap());
            if u & (1 << 31) != 0 {
                bad_leaf[at..at + 4].copy_from_slice(&(u | 0x7fff_fff0).to_le_bytes());
            }
        }
        let cases: [(&str, Vec<u8>); 5] = [
            ("empty trie", charsmap(&[], b"a\0")),
            (
                "trie of 2 units",
                charsmap(&[0x0000_0400, 0x0000_0061], b"a\0"),
            ),
            (
                "header larger than the file",
                vec![0xff, 0xff, 0, 0, 1, 2, 3, 4],
            ),
            ("truncated trie", truncated_trie),
            ("leaves past the strings", bad_leaf),
        ];
        let p = Path::new("spiece.model");
        for (name, cm) in cases {
            assert!(validate_charsmap(&cm).is_err(), "{name}: check passed");
            let Err(e) = T5Tokenizer::from_spiece_bytes(p, &spiece_model(-2.0, Some(&cm)), 2)
            else {
                panic!("{name}: a corrupt charsmap was accepted");
            };
            assert!(e.to_string().contains("charsmap"), "{name}: {e}");
        }
    }

    #[test]
    fn non_finite_scores_are_refused() {
        let p = Path::new("spiece.model");
        for s in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let Err(e) = T5Tokenizer::from_spiece_bytes(p, &spiece_model(s, None), 2) else {
                panic!("score {s} accepted");
            };
            assert!(e.to_string().contains("score"), "{e}");
        }
    }

    /// The same check guards a `tokenizer.json` that carries a precompiled normalizer.
    #[test]
    fn tokenizer_json_with_corrupt_charsmap_is_refused() {
        let p = Path::new("spiece.model");
        let good =
            T5Tokenizer::from_spiece_bytes(p, &spiece_model(-2.0, Some(&real_t5_charsmap())), 2)
                .unwrap();
        let text = good.inner.to_string(false).unwrap();
        let json = Path::new("tokenizer.json");
        T5Tokenizer::from_json_bytes(json, text.as_bytes()).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let bad = base64::encode(charsmap(&[0x0000_0400, 0x0000_0061], b"a\0"));
        v["normalizer"]["precompiled_charsmap"] = serde_json::Value::String(bad);
        let Err(e) = T5Tokenizer::from_json_bytes(json, v.to_string().as_bytes()) else {
            panic!("a tokenizer.json with a corrupt charsmap was accepted");
        };
        assert!(e.to_string().contains("precompiled_charsmap"), "{e}");
    }

    /// The last line of defence: a tokenizer built around an unchecked corrupt charsmap panics
    /// inside `tokenizers`; the engine returns an error instead.
    #[test]
    fn a_panic_inside_tokenizers_is_an_error() {
        let bad = charsmap(&[0x0000_0400, 0x0000_0061], b"a\0");
        let vocab = vec![("<unk>".to_string(), 0.0), ("a".to_string(), -1.0)];
        let mut inner = Tokenizer::new(Unigram::from(vocab, Some(0), false).unwrap());
        inner.with_normalizer(Some(Precompiled::from(&bad).unwrap()));
        let e = encode_ids(&inner, "a").unwrap_err();
        assert!(e.to_string().contains("failed on this text"), "{e}");
    }

    #[test]
    fn encode_errors_quote_only_the_start_of_the_text() {
        let long = "ab".repeat(50_000);
        let e = encode_error(&long, "x").to_string();
        assert!(e.len() < 200, "{} bytes", e.len());
        assert!(e.contains("abab") && e.contains('…'), "{e}");
        assert_eq!(
            encode_error("short", "x").to_string(),
            "tokenizing \"short\": x"
        );
    }

    #[test]
    fn wire_reader_rejects_garbage() {
        assert!(SpModel::parse(b"").is_err());
        assert!(SpModel::parse(&[0x0a, 0x05, 0x0a]).is_err());
        assert!(SpModel::parse(&[0xff; 12]).is_err());
    }
}

// ---- CLIP --------------------------------------------------------------------------------------

/// The special tokens of a CLIP tokenizer (transformers' `CLIPTokenizer` class defaults when the
/// folder's config files do not name them).
#[derive(Clone, Debug, PartialEq)]
pub struct ClipSpecialTokens {
    pub bos: String,
    pub eos: String,
    pub pad: String,
    pub unk: String,
}

impl Default for ClipSpecialTokens {
    fn default() -> Self {
        ClipSpecialTokens {
            bos: "<|startoftext|>".into(),
            eos: "<|endoftext|>".into(),
            pad: "<|endoftext|>".into(),
            unk: "<|endoftext|>".into(),
        }
    }
}

/// The pre-tokenizer pattern of transformers 5's `CLIPTokenizer` (the special tokens, English
/// contractions, letter runs, single digits, runs of other non-space characters).
pub const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The CLIP BPE tokenizer as transformers 5.24's `CLIPTokenizer` (= `CLIPTokenizerFast`) builds
/// it from a checkpoint's `tokenizer/` folder (FLUX.1: `vocab.json`, `merges.txt`,
/// `special_tokens_map.json`, `tokenizer_config.json`), or read from `tokenizer.json`:
///
/// - normalizer: NFC, `\s+` → `" "`, lower-case (no strip: edge whitespace becomes a removed
///   separator);
/// - pre-tokenizer: split on [`CLIP_SPLIT_PATTERN`] keeping the matches (everything else, i.e.
///   whitespace, is dropped), then byte-level (GPT-2 byte→unicode map, its own regex, no prefix
///   space);
/// - model: BPE with `end_of_word_suffix` `</w>`, no continuing-subword prefix, unk
///   `<|endoftext|>`, no unk fusing;
/// - special tokens BOS/EOS/UNK/PAD (matched in the text as added tokens, with the flags the
///   config files give them); a prompt is `BOS ids EOS`, truncated to keep the EOS and padded
///   with the pad token (FLUX: `<|endoftext|>`).
///
/// transformers 4's slow `CLIPTokenizer` additionally ran `ftfy.fix_text` (when installed) and
/// `html.unescape`, and lower-cased with Python's `str.lower`; transformers 5 (what FLUX
/// pipelines run today) does neither ftfy nor HTML unescaping, and this follows transformers 5.
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
}

/// One special-token entry of `tokenizer_config.json` / `special_tokens_map.json`: a plain
/// string (transformers makes it `AddedToken(s, special=True, normalized=False)`) or an
/// `AddedToken` dict with its flags.
fn added_token_from_json(v: &serde_json::Value) -> Option<AddedToken> {
    match v {
        serde_json::Value::String(s) => Some(AddedToken::from(s.clone(), true)),
        serde_json::Value::Object(m) => {
            let content = m.get("content")?.as_str()?.to_string();
            let flag = |k: &str, d: bool| m.get(k).and_then(|x| x.as_bool()).unwrap_or(d);
            Some(
                AddedToken::from(content, true)
                    .lstrip(flag("lstrip", false))
                    .rstrip(flag("rstrip", false))
                    .single_word(flag("single_word", false))
                    .normalized(flag("normalized", false))
                    .special(flag("special", true)),
            )
        }
        _ => None,
    }
}

fn read_json_object(path: &Path) -> TResult<Option<serde_json::Map<String, serde_json::Value>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(invalid(path, "top level is not a JSON object")),
        Err(e) => Err(invalid(path, format!("invalid JSON: {e}"))),
    }
}

/// The special tokens (names and added-token flags) a CLIP tokenizer folder configures:
/// `tokenizer_config.json` first, then `special_tokens_map.json`, then the class defaults; an
/// `added_tokens_decoder` in `tokenizer_config.json` gives the final flags of the tokens it lists.
fn clip_specials(dir: &Path) -> TResult<(ClipSpecialTokens, Vec<AddedToken>)> {
    let cfg = read_json_object(&dir.join("tokenizer_config.json"))?;
    let map = read_json_object(&dir.join("special_tokens_map.json"))?;
    let mut names = ClipSpecialTokens::default();
    let mut tokens: Vec<AddedToken> = Vec::new();
    for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        let entry = [cfg.as_ref(), map.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|m| m.get(key).filter(|v| !v.is_null()));
        let tok = match entry {
            Some(v) => added_token_from_json(v).ok_or_else(|| {
                invalid(
                    dir,
                    format!("`{key}` must be a string or an AddedToken object, got {v}"),
                )
            })?,
            None => {
                let d = ClipSpecialTokens::default();
                let s = match key {
                    "bos_token" => d.bos,
                    "eos_token" => d.eos,
                    "unk_token" => d.unk,
                    _ => d.pad,
                };
                AddedToken::from(s, true)
            }
        };
        let slot = match key {
            "bos_token" => &mut names.bos,
            "eos_token" => &mut names.eos,
            "unk_token" => &mut names.unk,
            _ => &mut names.pad,
        };
        slot.clone_from(&tok.content);
        // A later entry with the same content replaces the earlier one (as adding it again does).
        tokens.retain(|t| t.content != tok.content);
        tokens.push(tok);
    }
    if let Some(serde_json::Value::Object(dec)) =
        cfg.as_ref().and_then(|m| m.get("added_tokens_decoder"))
    {
        for v in dec.values() {
            if let Some(t) = added_token_from_json(v) {
                tokens.retain(|x| x.content != t.content);
                tokens.push(t);
            }
        }
    }
    Ok((names, tokens))
}

impl ClipTokenizer {
    /// Reads a CLIP tokenizer folder: `tokenizer.json` when present, else `vocab.json` +
    /// `merges.txt`; special tokens from `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn from_dir(dir: &Path) -> TResult<Self> {
        let (names, added) = clip_specials(dir)?;
        let json = dir.join("tokenizer.json");
        let inner = if json.is_file() {
            let mut t = Tokenizer::from_file(&json)
                .map_err(|e| invalid(&json, format!("tokenizer.json: {e}")))?;
            t.with_truncation(None)
                .map_err(|e| invalid(&json, e.to_string()))?;
            t.with_padding(None);
            t
        } else {
            let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
            for p in [&vocab, &merges] {
                if !p.is_file() {
                    return Err(TokenizerError::Missing {
                        path: dir.to_path_buf(),
                    });
                }
            }
            Self::build(&vocab, &merges, &names.unk, &added)?
        };
        Self::with_specials(inner, dir, &names)
    }

    /// transformers' CLIP tokenizer pipeline over `vocab.json` + `merges.txt`.
    fn build(vocab: &Path, merges: &Path, unk: &str, added: &[AddedToken]) -> TResult<Tokenizer> {
        use tokenizers::models::bpe::BPE;
        use tokenizers::normalizers::{Lowercase, Replace, Sequence as NSeq, NFC};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        use tokenizers::SplitDelimiterBehavior;

        let utf8 = |p: &Path| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| invalid(p, "path is not valid UTF-8"))
        };
        let model = BPE::from_file(&utf8(vocab)?, &utf8(merges)?)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .unk_token(unk.to_string())
            .fuse_unk(false)
            .build()
            .map_err(|e| invalid(vocab, format!("vocab.json / merges.txt: {e}")))?;
        let mut t = Tokenizer::new(model);
        let replace = Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| invalid(vocab, e.to_string()))?;
        t.with_normalizer(Some(NSeq::new(vec![
            NFC.into(),
            replace.into(),
            Lowercase.into(),
        ])));
        let split = Split::new(
            SplitPattern::Regex(CLIP_SPLIT_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| invalid(vocab, e.to_string()))?;
        t.with_pre_tokenizer(Some(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        t.with_decoder(Some(ByteLevel::default()));
        t.add_special_tokens(added);
        Ok(t)
    }

    fn with_specials(inner: Tokenizer, dir: &Path, names: &ClipSpecialTokens) -> TResult<Self> {
        let id = |s: &str, what: &str| {
            inner.token_to_id(s).ok_or_else(|| {
                invalid(
                    dir,
                    format!("the {what} token `{s}` is not in the vocabulary"),
                )
            })
        };
        Ok(ClipTokenizer {
            bos_id: id(&names.bos, "BOS")?,
            eos_id: id(&names.eos, "EOS")?,
            pad_id: id(&names.pad, "pad")?,
            inner,
        })
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size including added tokens (must not exceed the encoder's embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text` without BOS/EOS and without truncation.
    pub fn encode_raw(&self, text: &str) -> TResult<Vec<u32>> {
        encode_ids(&self.inner, text)
    }

    /// `tokenizer(text, padding="max_length", max_length=L, truncation=True)`: `BOS`, the first
    /// `L − 2` ids, `EOS`, then pad ids up to `L`. The mask covers BOS…EOS.
    pub fn encode_padded(&self, text: &str, max_len: usize) -> TResult<TokenizedPrompt> {
        let raw = self.encode_raw(text)?;
        frame_padded(
            text,
            raw,
            [self.bos_id, self.eos_id, self.pad_id],
            max_len,
            "BOS and EOS",
        )
    }
}
