//! ImageReward's prompt tokenizer: transformers' `BertTokenizer('bert-base-uncased')` with the two
//! tokens BLIP's `init_tokenizer` adds (`[DEC]` as bos, `[ENC]` as an additional special token,
//! ids right after the vocabulary), called as `ImageReward.score` calls it:
//! `tokenizer(prompt, padding='max_length', truncation=True, max_length=35)`.
//!
//! The encoding is Hugging Face's `tokenizers` (what `BertTokenizerFast` runs), built from a
//! tokenizer folder:
//! - `tokenizer.json`: used as is (its truncation/padding settings are ignored);
//! - else `vocab.txt` (one WordPiece token a line, id = line number): BERT's normalizer (clean
//!   control characters, space around CJK characters, lower-case, strip accents), BERT's
//!   pre-tokenizer (split on whitespace and punctuation), WordPiece (`##` continuation, `[UNK]`,
//!   words over 100 characters are `[UNK]`), and the special tokens `[PAD] [UNK] [CLS] [SEP]
//!   [MASK] [DEC] [ENC]` matched in the text as added tokens; `[DEC]`/`[ENC]` get the ids after the
//!   vocabulary when it does not hold them.
//!
//! A prompt becomes `[CLS] ids[..L−2] [SEP]` padded with `[PAD]` to `L`, mask 1 on `[CLS]..[SEP]`.
//! `ImageReward.score` feeds these ids unchanged (it does not put `[ENC]` in position 0).

use crate::tokenizer::{
    encode_ids, frame_padded, invalid, TResult, TokenizedPrompt, TokenizerError,
};
use crate::util::limits;
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Tokenizer};

/// The largest `vocab.txt` read (bert-base-uncased's is 232 KB).
const MAX_VOCAB_BYTES: u64 = 64 << 20;

/// The BERT WordPiece tokenizer of ImageReward.
pub struct BertTokenizer {
    inner: Tokenizer,
    cls_id: u32,
    sep_id: u32,
    pad_id: u32,
    enc_id: u32,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TokenizerError + '_ {
    move |e| TokenizerError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

impl BertTokenizer {
    /// Reads a tokenizer folder: `tokenizer.json` when present, else `vocab.txt`.
    pub fn from_dir(dir: &Path) -> TResult<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_json_file(&json);
        }
        let vocab = dir.join("vocab.txt");
        if vocab.is_file() {
            return Self::from_vocab_file(&vocab);
        }
        Err(TokenizerError::Missing {
            path: dir.to_path_buf(),
        })
    }

    pub fn from_json_file(path: &Path) -> TResult<Self> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            .map_err(|e| invalid(path, format!("tokenizer.json: not valid JSON: {e}")))?;
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes)).map_err(|_| {
            invalid(
                path,
                "tokenizer.json: malformed (the tokenizer library failed on it)",
            )
        })?;
        let mut inner = parsed.map_err(|e| invalid(path, format!("tokenizer.json: {e}")))?;
        inner
            .with_truncation(None)
            .map_err(|e| invalid(path, e.to_string()))?;
        inner.with_padding(None);
        Self::with_specials(inner, path)
    }

    pub fn from_vocab_file(path: &Path) -> TResult<Self> {
        let len = std::fs::metadata(path).map_err(io(path))?.len();
        if len > MAX_VOCAB_BYTES {
            return Err(invalid(
                path,
                format!("vocab.txt is {len} bytes, over the {MAX_VOCAB_BYTES}-byte limit"),
            ));
        }
        let bytes = std::fs::read(path).map_err(io(path))?;
        Self::from_vocab_bytes(path, &bytes)
    }

    /// `vocab.txt` contents: one token a line.
    pub fn from_vocab_bytes(path: &Path, bytes: &[u8]) -> TResult<Self> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| invalid(path, format!("vocab.txt is not UTF-8: {e}")))?;
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end()).collect();
        if let Err(e) = limits::VOCAB.check("vocab.txt lines", lines.len() as u128) {
            return Err(invalid(path, e.to_string()));
        }
        let mut seen = std::collections::HashSet::with_capacity(lines.len());
        for (i, tok) in lines.iter().enumerate() {
            if tok.is_empty() {
                return Err(invalid(path, format!("line {}: empty token", i + 1)));
            }
            if !seen.insert(*tok) {
                return Err(invalid(
                    path,
                    format!("line {}: token {tok:?} appears twice", i + 1),
                ));
            }
        }
        for s in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] {
            if !seen.contains(s) {
                return Err(invalid(path, format!("vocab.txt has no {s} token")));
            }
        }
        let model = WordPiece::builder()
            .vocab(
                WordPiece::read_bytes(bytes)
                    .map_err(|e| invalid(path, format!("vocab.txt: {e}")))?,
            )
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| invalid(path, format!("vocab.txt: {e}")))?;
        let mut t = Tokenizer::new(model);
        t.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
        t.with_pre_tokenizer(Some(BertPreTokenizer));
        let specials: Vec<AddedToken> = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]",
        ]
        .iter()
        .filter(|s| **s != "[MASK]" || lines.contains(&"[MASK]"))
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
        t.add_special_tokens(&specials);
        Self::with_specials(t, path)
    }

    fn with_specials(inner: Tokenizer, path: &Path) -> TResult<Self> {
        let id = |s: &str| {
            inner
                .token_to_id(s)
                .ok_or_else(|| invalid(path, format!("the tokenizer has no {s} token")))
        };
        Ok(BertTokenizer {
            cls_id: id("[CLS]")?,
            sep_id: id("[SEP]")?,
            pad_id: id("[PAD]")?,
            enc_id: id("[ENC]")?,
            inner,
        })
    }

    pub fn cls_id(&self) -> u32 {
        self.cls_id
    }
    pub fn sep_id(&self) -> u32 {
        self.sep_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    /// `enc_token_id` (BLIP's ITM replaces `[CLS]` with it; ImageReward's `score` does not).
    pub fn enc_id(&self) -> u32 {
        self.enc_id
    }
    /// Vocabulary size including the added tokens (at most the text encoder's `vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text` without `[CLS]`/`[SEP]` and without truncation.
    pub fn encode_raw(&self, text: &str) -> TResult<Vec<u32>> {
        encode_ids(&self.inner, text)
    }

    /// `tokenizer(text, padding='max_length', truncation=True, max_length=L)`.
    pub fn encode_padded(&self, text: &str, max_len: usize) -> TResult<TokenizedPrompt> {
        let raw = self.encode_raw(text)?;
        frame_padded(
            text,
            raw,
            [self.cls_id, self.sep_id, self.pad_id],
            max_len,
            "[CLS] and [SEP]",
        )
    }
}
