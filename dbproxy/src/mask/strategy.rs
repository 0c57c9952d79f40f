//! Masking strategies, and the keyed [`Masker`] that applies them: pure functions of (secret
//! key, strategy, value), no I/O.
//!
//! # What a mask is
//! * **Deterministic and keyed.** The same value masks the same way in every call and in every
//!   [`Masker`] built with the same key, and differently with another key. What the mask
//!   depends on besides the key is the strategy and the value's *format* (below), never the
//!   table or column: the same email masks to the same address everywhere, so joins and
//!   lookups on masked columns stay consistent.
//! * **Bijective** for `email`, `name`, `phone` and `digits`: a keyed permutation built on FF1
//!   (NIST SP 800-38G, AES-256, the RustCrypto `fpe` crate), never a truncated hash, so two
//!   real values never share a mask and [`Masker::unmask`] can turn a masked value the
//!   developer copied into a query back into the real one.
//! * **Format-preserving**: the mask has as many characters (and bytes) as the value, with the
//!   same punctuation in the same places.
//!
//! # How the bijective strategies work
//! A value is read as one *slot* per character. A **fixed** slot keeps its character: ASCII
//! punctuation, spaces and control characters (`@ . - + ( ) '`…), an email's top-level domain,
//! a number's leading zeros. A **free** slot holds a character of an alphabet it must stay in:
//! `0-9`; `1-9` for the first significant digit of a `digits` value (so an INT keeps its
//! magnitude); `a-z`; `A-Z` (so case is kept per position); or one of the non-ASCII ranges of
//! [`NON_ASCII`]. The list of slots is the value's *format*; it is hashed with the strategy
//! into the FF1 tweak, so each format has its own independent permutation.
//!
//! The free characters, read as one mixed-radix number, are an element `x` of `[0, N)`, `N`
//! the product of their alphabets' sizes. With `P` a keyed permutation of `[0, N)`, the mask
//! is `P⁻¹(P(x) + 1 mod N)`: `P` lays the whole domain out as one keyed cycle and the mask is
//! the next value on it. That is still a bijection, and no value masks to itself (unless its
//! format has a single value, e.g. `"0"` or `"--"`, which hides nothing): with 9 one-digit
//! numbers, a plain permutation would show one in nine as itself. The result is written back
//! into the same free slots, so the mask has the same format as the value: re-reading it gives
//! the same slots and tweak, which is what lets [`Masker::unmask`] invert it. `P` is:
//! * for `N ≥ 2^16`: FF1 over the binary digits of `x`, at least 20 of them (fpe's, and NIST's,
//!   minimum domain of 10^6), cycle-walking (encrypting again until the result is below `N`,
//!   which is a permutation of `[0, N)`): under 2 walks expected when `N ≥ 2^20`, at most 16
//!   below that;
//! * for `N < 2^16` (a 1–4 digit number, a 3-letter name, the email `ab@x.com`), too small for
//!   FF1: the domain sorted by a keyed hash (HMAC-SHA256 of the tweak and the element), built
//!   once per (strategy, format) and cached (the cache is bounded). Lengths are independent
//!   permutations, as are all formats.
//!
//! Beyond 64 free characters, the free characters are cut into chunks of 33 to 64, each
//! permuted as above, in two chained passes (forward, each chunk's tweak taking the previous
//! chunk's output, then backward, taking the next chunk's output): a bijection whose every
//! output chunk depends on every input chunk, at a cost linear in the length (one FF1 over
//! thousands of bits would be quadratic). There the mask is `P(x)` itself (undoing the passes
//! does not mix, so `P⁻¹(P(x) + 1)` would keep most of `x`); with `N ≥ 10^64`, a value masking
//! to itself has no practical chance.
//!
//! # Characters a strategy does not understand
//! Non-ASCII characters are never kept, since a name or address can be written entirely in
//! them: each is a free slot of its own range of [`NON_ASCII`] (each range has one UTF-8 length,
//! so bytes are preserved too). `é` becomes another Latin-1/Latin-extended character, a CJK
//! ideograph another ideograph, an emoji another pictograph; the mask reveals only which range
//! each character came from. (Unicode punctuation such as `’` is permuted like the rest: an
//! alphabet of "non-ASCII letters only" could not be ranked without Unicode tables.)
//!
//! A value that is not UTF-8 is masked as bytes: the same keyed-cycle construction over all
//! byte strings of its length, walked until the result is again not UTF-8. The mask has the
//! same byte length, is never the value itself (up to 64 bytes by construction, beyond with no
//! practical chance), never valid UTF-8 (so it cannot collide with a text value's mask), and
//! unmasks exactly.
//!
//! # Performance
//! [`Masker::new`] builds the FF1 cipher (AES-256 key schedule) and the keyed HMAC states once;
//! a mask is two keyed permutations: for a typical email or name, two FF1 encryptions (ten
//! AES-CBC-MAC rounds each plus small big-number arithmetic, tens of microseconds in a release
//! build). Short values cost a table lookup after their format's table is built (up to 65,535
//! HMACs, once). `hash`, `null`, `fixed` and `redact` cost at most one HMAC.

use aes::Aes256;
use fpe::ff1::{FlexibleNumeralString, FF1};
use hmac::{Hmac, Mac};
use num_bigint::BigUint;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

type HmacSha256 = Hmac<Sha256>;

/// Starts every derived key, tweak and hashed message: another scheme would get another name.
const DOMAIN: &[u8] = b"devinprod dbproxy mask v1";
/// Free characters permuted as one block; longer values are chunked (module doc).
const MAX_BLOCK_SLOTS: usize = 64;
/// From this domain size (in bits) on, a value is masked with `P(x)` rather than
/// `P⁻¹(P(x) + 1)` (see [`Masker::step`]).
const LARGE_DOMAIN_BITS: f64 = 40.0;
/// A value as masked by a strategy.
type MemoKey = (MaskStrategy, Vec<u8>);
/// Masked values remembered per [`Masker`]: apps read the same rows again and again, and a
/// bijective mask costs an FF1 evaluation (tens of microseconds).
const MEMO_ENTRIES: usize = 200_000;
/// Domains smaller than this are permuted by a cached sorted table, not by FF1.
const TABLE_LIMIT: u32 = 1 << 16;
/// fpe's FF1 takes radix-2 strings of at least 20 numerals (2^20 ≥ 10^6, NIST's minimum).
const MIN_FF1_BITS: usize = 20;
/// Cached table entries (4 bytes each) beyond which the cache is emptied: at most 16 MiB.
const MAX_CACHED_ENTRIES: usize = 1 << 22;

const VALID_FORMS: &str =
    "email, name, phone, digits, hash, null, fixed:VALUE, redact, redact:PREFIX:SUFFIX";

/// A masking strategy as written in `dbproxy.toml`: `"email"`, `"name"`, `"phone"`,
/// `"digits"`, `"hash"`, `"null"`, `"fixed:VALUE"`, `"redact"` or `"redact:PREFIX:SUFFIX"`.
///
/// The masker is handed non-NULL values only: a NULL stays NULL whatever the strategy (it
/// reveals nothing the schema does not).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MaskStrategy {
    /// A realistic address: the top-level domain, `@`, dots and other punctuation are kept in
    /// place, every other letter and digit is permuted (case kept per position). A value that
    /// is not shaped like an address is masked like [`MaskStrategy::Name`].
    Email,
    /// Letters permuted keeping each position's case, digits permuted, spaces, hyphens,
    /// apostrophes and other ASCII punctuation kept in place.
    Name,
    /// Digits permuted; every ASCII non-digit character (`+`, spaces, parentheses, dashes)
    /// kept in place. Letters (`ext`) are permuted too: a free-text column may hold anything.
    Phone,
    /// Digits permuted keeping a leading `-`, the number of digits, leading zeros, and the
    /// first significant digit non-zero: an INT stays of the same magnitude and sign.
    Digits,
    /// HMAC-SHA256 of the value under the key, in lowercase hex (64 characters, cut to the
    /// column's length). One-way and not length-preserving.
    Hash,
    /// SQL NULL.
    Null,
    /// This value, whatever the real one (cut to the column's length).
    Fixed(String),
    /// Keeps `keep_prefix` leading and `keep_suffix` trailing characters and replaces the rest
    /// with `*`; a value of `keep_prefix + keep_suffix` characters or fewer becomes all `*`
    /// (keeping it whole would reveal it). Bare `redact` is `redact:0:0`.
    Redact {
        keep_prefix: usize,
        keep_suffix: usize,
    },
}

impl MaskStrategy {
    /// Whether masks can be turned back into real values with [`Masker::unmask`]: `email`,
    /// `name`, `phone` and `digits`, which are keyed permutations.
    pub fn is_bijective(&self) -> bool {
        self.permutation_tag().is_some()
    }

    /// The strategy's part of the tweak, for the bijective strategies.
    fn permutation_tag(&self) -> Option<&'static str> {
        match self {
            Self::Email => Some("email"),
            Self::Name => Some("name"),
            Self::Phone => Some("phone"),
            Self::Digits => Some("digits"),
            Self::Hash | Self::Null | Self::Fixed(_) | Self::Redact { .. } => None,
        }
    }
}

/// Writes the strategy as `dbproxy.toml` spells it (what [`FromStr`] reads back).
impl fmt::Display for MaskStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Email => f.write_str("email"),
            Self::Name => f.write_str("name"),
            Self::Phone => f.write_str("phone"),
            Self::Digits => f.write_str("digits"),
            Self::Hash => f.write_str("hash"),
            Self::Null => f.write_str("null"),
            Self::Fixed(value) => write!(f, "fixed:{value}"),
            Self::Redact {
                keep_prefix: 0,
                keep_suffix: 0,
            } => f.write_str("redact"),
            Self::Redact {
                keep_prefix,
                keep_suffix,
            } => write!(f, "redact:{keep_prefix}:{keep_suffix}"),
        }
    }
}

/// A strategy string that is none of the valid forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMaskStrategyError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for ParseMaskStrategyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid masking strategy {:?}: {}; valid forms are {VALID_FORMS}",
            self.input, self.reason
        )
    }
}

impl std::error::Error for ParseMaskStrategyError {}

impl FromStr for MaskStrategy {
    type Err = ParseMaskStrategyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseMaskStrategyError {
            input: s.to_string(),
            reason,
        };
        Ok(match s {
            "email" => Self::Email,
            "name" => Self::Name,
            "phone" => Self::Phone,
            "digits" => Self::Digits,
            "hash" => Self::Hash,
            "null" => Self::Null,
            "redact" => Self::Redact {
                keep_prefix: 0,
                keep_suffix: 0,
            },
            "fixed" => return Err(err("`fixed` needs its value, as `fixed:VALUE`")),
            _ => {
                if let Some(value) = s.strip_prefix("fixed:") {
                    return Ok(Self::Fixed(value.to_string()));
                }
                let Some(counts) = s.strip_prefix("redact:") else {
                    return Err(err("unknown strategy"));
                };
                let Some((prefix, suffix)) = counts.split_once(':') else {
                    return Err(err("`redact:` needs two counts, as `redact:PREFIX:SUFFIX`"));
                };
                let count = |n: &str| {
                    n.parse::<usize>()
                        .map_err(|_| err("PREFIX and SUFFIX must be whole numbers of characters"))
                };
                Self::Redact {
                    keep_prefix: count(prefix)?,
                    keep_suffix: count(suffix)?,
                }
            }
        })
    }
}

/// The characters a free slot may hold: one contiguous range of code points (of byte values,
/// for [`BYTE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Alphabet {
    /// Identifies the alphabet in the tweak.
    code: u8,
    lo: u32,
    hi: u32,
}

impl Alphabet {
    const fn new(code: u8, lo: u32, hi: u32) -> Self {
        Self { code, lo, hi }
    }

    fn radix(self) -> u32 {
        self.hi - self.lo + 1
    }

    fn contains(self, symbol: u32) -> bool {
        (self.lo..=self.hi).contains(&symbol)
    }
}

const DIGIT: Alphabet = Alphabet::new(1, '0' as u32, '9' as u32);
const NONZERO_DIGIT: Alphabet = Alphabet::new(2, '1' as u32, '9' as u32);
const LOWER: Alphabet = Alphabet::new(3, 'a' as u32, 'z' as u32);
const UPPER: Alphabet = Alphabet::new(4, 'A' as u32, 'Z' as u32);
/// Every byte value, for values that are not UTF-8.
const BYTE: Alphabet = Alphabet::new(5, 0, 0xFF);

/// The ranges non-ASCII characters are permuted within. Together they are every non-ASCII
/// Unicode scalar value, each range of one UTF-8 length, cut so that a character's stand-in is
/// of a similar kind.
const NON_ASCII: [Alphabet; 10] = [
    Alphabet::new(16, 0x80, 0x9F),          // C1 controls
    Alphabet::new(17, 0xA0, 0x2FF),         // Latin-1 supplement, Latin extended, IPA: é ß ł
    Alphabet::new(18, 0x300, 0x7FF),        // combining marks, Greek, Cyrillic, Hebrew, Arabic…
    Alphabet::new(19, 0x800, 0x4DFF),       // other 3-byte scripts, punctuation and symbols
    Alphabet::new(20, 0x4E00, 0x9FFF),      // CJK unified ideographs
    Alphabet::new(21, 0xA000, 0xD7FF),      // Yi, Hangul syllables… (then the surrogate gap)
    Alphabet::new(22, 0xE000, 0xFFFF),      // private use, compatibility forms, specials
    Alphabet::new(23, 0x1_0000, 0x1_F2FF),  // 4-byte scripts and symbols
    Alphabet::new(24, 0x1_F300, 0x1_FAFF),  // emoji and pictographs
    Alphabet::new(25, 0x1_FB00, 0x10_FFFF), // the rest of the supplementary planes
];

/// One character position of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Kept as it is (this code point).
    Fixed(u32),
    /// Permuted within this alphabet.
    Free(Alphabet),
}

/// A value's format under a bijective strategy (module doc). Must give the same slots for a
/// value and its mask: it only looks at what masking keeps (fixed characters, and which
/// alphabet each free character is in).
fn text_slots(strategy: &MaskStrategy, chars: &[char]) -> Vec<Slot> {
    let mut slots: Vec<Slot> = chars.iter().map(|&c| char_slot(c)).collect();
    match strategy {
        MaskStrategy::Email => keep_top_level_domain(chars, &mut slots),
        MaskStrategy::Digits => keep_magnitude(chars, &mut slots),
        _ => {}
    }
    slots
}

fn char_slot(c: char) -> Slot {
    let code = u32::from(c);
    match c {
        '0'..='9' => Slot::Free(DIGIT),
        'a'..='z' => Slot::Free(LOWER),
        'A'..='Z' => Slot::Free(UPPER),
        _ if c.is_ascii() => Slot::Fixed(code),
        // Every scalar value above ASCII is in a range; `Fixed` only satisfies the type.
        _ => NON_ASCII
            .iter()
            .find(|a| a.contains(code))
            .map_or(Slot::Fixed(code), |a| Slot::Free(*a)),
    }
}

/// For `local@domain.tld` (exactly one `@`, both sides non-empty, a top-level label of ASCII
/// letters after a non-empty label): keeps the top-level label, so the mask is still an address
/// of a real-looking kind. The `@` and dots are ASCII punctuation, kept anyway.
fn keep_top_level_domain(chars: &[char], slots: &mut [Slot]) {
    let mut ats = chars.iter().enumerate().filter(|(_, &c)| c == '@');
    let (Some((at, _)), None) = (ats.next(), ats.next()) else {
        return;
    };
    let Some(dot) = chars.iter().rposition(|&c| c == '.') else {
        return;
    };
    if at == 0 || dot <= at + 1 || dot + 1 == chars.len() {
        return;
    }
    if !chars[dot + 1..].iter().all(char::is_ascii_alphabetic) {
        return;
    }
    for (slot, &c) in slots[dot + 1..].iter_mut().zip(&chars[dot + 1..]) {
        *slot = Slot::Fixed(u32::from(c));
    }
}

/// In the first run of digits, keeps leading zeros and makes the first significant digit
/// non-zero: `-42` stays a negative two-digit number, `007` stays `00` and a digit `1-9`.
fn keep_magnitude(chars: &[char], slots: &mut [Slot]) {
    let Some(start) = chars.iter().position(char::is_ascii_digit) else {
        return;
    };
    for (slot, &c) in slots[start..].iter_mut().zip(&chars[start..]) {
        match c {
            '0' => *slot = Slot::Fixed(u32::from('0')),
            '1'..='9' => {
                *slot = Slot::Free(NONZERO_DIGIT);
                return;
            }
            _ => return,
        }
    }
}

/// The FF1 tweak (and table key) of a format: the strategy and every slot.
fn format_tweak(tag: &str, slots: &[Slot]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update([0]);
    h.update(tag.as_bytes());
    h.update([0]);
    for slot in slots {
        match *slot {
            // Alphabet codes are non-zero, so 0 + 4 bytes cannot be mistaken for them.
            Slot::Fixed(c) => {
                h.update([0]);
                h.update(c.to_be_bytes());
            }
            Slot::Free(a) => h.update([a.code]),
        }
    }
    h.finalize().into()
}

/// The tweak of chunk `index` in a chained pass over a long value (module doc).
fn chunk_tweak(tweak: &[u8; 32], pass: u8, index: usize, neighbour: Option<&[u32]>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tweak);
    h.update([pass]);
    h.update((index as u64).to_be_bytes());
    for d in neighbour.unwrap_or_default() {
        h.update(d.to_be_bytes());
    }
    h.finalize().into()
}

/// The mixed-radix number whose digits (most significant first) are `digits`.
fn rank(radices: &[u32], digits: &[u32]) -> BigUint {
    let mut x = BigUint::default();
    for (&r, &d) in radices.iter().zip(digits) {
        x *= r;
        x += d;
    }
    x
}

/// The inverse of [`rank`].
fn unrank(radices: &[u32], mut x: BigUint, digits: &mut [u32]) -> Option<()> {
    for (&r, d) in radices.iter().zip(digits.iter_mut()).rev() {
        *d = u32::try_from(&(&x % r)).ok()?;
        x /= r;
    }
    Some(())
}

/// `digits + 1` modulo the domain (wrapping to all zeros), in place.
fn increment(radices: &[u32], digits: &mut [u32]) {
    for (&r, d) in radices.iter().zip(digits.iter_mut()).rev() {
        if *d + 1 < r {
            *d += 1;
            return;
        }
        *d = 0;
    }
}

/// `digits - 1` modulo the domain, in place.
fn decrement(radices: &[u32], digits: &mut [u32]) {
    for (&r, d) in radices.iter().zip(digits.iter_mut()).rev() {
        if *d > 0 {
            *d -= 1;
            return;
        }
        *d = r - 1;
    }
}

/// `value` with everything but `keep_prefix` leading and `keep_suffix` trailing characters
/// replaced by `*` (every byte, if it is not UTF-8).
fn redact(value: &[u8], keep_prefix: usize, keep_suffix: usize) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(value) else {
        return vec![b'*'; value.len()];
    };
    let n = text.chars().count();
    if keep_prefix.saturating_add(keep_suffix) >= n {
        return "*".repeat(n).into_bytes();
    }
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            if i < keep_prefix || i >= n - keep_suffix {
                c
            } else {
                '*'
            }
        })
        .collect::<String>()
        .into_bytes()
}

/// `out` cut to `max_chars` characters (bytes, if it is not UTF-8).
fn truncate(mut out: Vec<u8>, max_chars: Option<usize>) -> Vec<u8> {
    let Some(max) = max_chars else { return out };
    let cut = match std::str::from_utf8(&out) {
        Ok(text) => text.char_indices().nth(max).map(|(i, _)| i),
        Err(_) => (out.len() > max).then_some(max),
    };
    if let Some(cut) = cut {
        out.truncate(cut);
    }
    out
}

fn keyed(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// A keyed permutation of a small domain `[0, n)`, and its inverse.
struct Table {
    forward: Vec<u16>,
    inverse: Vec<u16>,
}

/// Tables by (format tweak, domain size).
#[derive(Default)]
struct TableCache {
    entries: usize,
    tables: HashMap<([u8; 32], u32), Arc<Table>>,
}

/// Masks values with a secret key (32 bytes). The key and everything derived from it stay
/// inside: `Debug` shows none of it, and nothing here logs.
///
/// Three independent keys are derived from the secret with HMAC-SHA256 (FF1's AES-256 key,
/// the small-domain tables' key, the `hash` strategy's key), so no key serves two algorithms.
pub struct Masker {
    ff1: FF1<Aes256>,
    table_key: HmacSha256,
    hash_key: HmacSha256,
    tables: Mutex<TableCache>,
    /// (strategy, value) → mask for the bijective strategies; emptied when full.
    memo: Mutex<HashMap<MemoKey, Vec<u8>>>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker").finish_non_exhaustive()
    }
}

impl Masker {
    pub fn new(secret: &[u8; 32]) -> Self {
        let derive = |purpose: &str| -> [u8; 32] {
            let mut mac = keyed(secret);
            mac.update(DOMAIN);
            mac.update(b": ");
            mac.update(purpose.as_bytes());
            mac.finalize().into_bytes().into()
        };
        Self {
            ff1: FF1::<Aes256>::new(&derive("ff1 key"), 2).expect("2 is a valid FF1 radix"),
            table_key: keyed(&derive("table key")),
            hash_key: keyed(&derive("hash key")),
            tables: Mutex::new(TableCache::default()),
            memo: Mutex::new(HashMap::new()),
        }
    }

    /// Masks `value`, the column's value as the MySQL text protocol carries it (bytes, usually
    /// UTF-8; never NULL). `max_chars` is the column's length limit in characters when known
    /// (e.g. VARCHAR(64) → 64): the output never exceeds it (a value longer than its column
    /// claims has its mask cut, which then cannot be unmasked). Returns `None` for SQL NULL
    /// output (strategy `null`).
    pub fn mask(
        &self,
        strategy: &MaskStrategy,
        value: &[u8],
        max_chars: Option<usize>,
    ) -> Option<Vec<u8>> {
        let out = match strategy {
            MaskStrategy::Null => return None,
            MaskStrategy::Fixed(fixed) => fixed.as_bytes().to_vec(),
            MaskStrategy::Hash => self.hash_hex(value).into_bytes(),
            MaskStrategy::Redact {
                keep_prefix,
                keep_suffix,
            } => redact(value, *keep_prefix, *keep_suffix),
            MaskStrategy::Email
            | MaskStrategy::Name
            | MaskStrategy::Phone
            | MaskStrategy::Digits => {
                let memo_key = (strategy.clone(), value.to_vec());
                let remembered = self
                    .memo
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&memo_key)
                    .cloned();
                match remembered {
                    Some(m) => m,
                    None => {
                        let m = self
                            .permute_value(strategy, value, true)
                            // Unreachable (every step is total on well-formed input); if it
                            // ever were, the value must still not get out.
                            .unwrap_or_else(|| redact(value, 0, 0));
                        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
                        if memo.len() >= MEMO_ENTRIES {
                            memo.clear();
                        }
                        memo.insert(memo_key, m.clone());
                        m
                    }
                }
            }
        };
        Some(truncate(out, max_chars))
    }

    /// The inverse of [`Masker::mask`] for the bijective strategies: the real value whose mask
    /// is `masked`. `None` when the strategy is not bijective. Every string is some value's
    /// mask (masking permutes each format), so for a bijective strategy this always answers;
    /// the proxy uses it to turn `WHERE email = '<masked>'` into the real value.
    pub fn unmask(&self, strategy: &MaskStrategy, masked: &[u8]) -> Option<Vec<u8>> {
        self.permute_value(strategy, masked, false)
    }

    /// `hash`: HMAC-SHA256(hash key, "hash" tag || value), lowercase hex.
    fn hash_hex(&self, value: &[u8]) -> String {
        let mut mac = self.hash_key.clone();
        mac.update(b"hash\0");
        mac.update(value);
        let mut hex = String::with_capacity(64);
        for b in mac.finalize().into_bytes() {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }

    /// Masks (`forward`) or unmasks a value under a bijective strategy.
    fn permute_value(
        &self,
        strategy: &MaskStrategy,
        value: &[u8],
        forward: bool,
    ) -> Option<Vec<u8>> {
        let tag = strategy.permutation_tag()?;
        if let Ok(text) = std::str::from_utf8(value) {
            let chars: Vec<char> = text.chars().collect();
            let slots = text_slots(strategy, &chars);
            let mut symbols: Vec<u32> = chars.iter().map(|&c| u32::from(c)).collect();
            self.step(&format_tweak(tag, &slots), &slots, &mut symbols, forward)?;
            let masked: Option<String> = symbols.into_iter().map(char::from_u32).collect();
            return masked.map(String::into_bytes);
        }
        // Not UTF-8: a step over all byte strings of this length, repeated until the result is
        // not UTF-8 either (cycle walking, a permutation of the non-UTF-8 strings). Up to 64
        // bytes the domain is one cycle, so the walk reaches another non-UTF-8 string before
        // coming back to this one (there are at least two of them).
        let slots = vec![Slot::Free(BYTE); value.len()];
        let tweak = format_tweak(tag, &slots);
        let mut symbols: Vec<u32> = value.iter().map(|&b| u32::from(b)).collect();
        loop {
            self.step(&tweak, &slots, &mut symbols, forward)?;
            let bytes: Vec<u8> = symbols.iter().map(|&s| s as u8).collect();
            if std::str::from_utf8(&bytes).is_err() {
                return Some(bytes);
            }
        }
    }

    /// Masks (`forward`) or unmasks the free slots of `symbols`: one step along the format's
    /// keyed cycle, `P⁻¹(P(x) ± 1)`, or `P(x)` / `P⁻¹(x)` beyond one block (module doc).
    fn step(
        &self,
        tweak: &[u8; 32],
        slots: &[Slot],
        symbols: &mut [u32],
        forward: bool,
    ) -> Option<()> {
        let free: Vec<(usize, Alphabet)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| match *slot {
                Slot::Free(a) => Some((i, a)),
                Slot::Fixed(_) => None,
            })
            .collect();
        let radices: Vec<u32> = free.iter().map(|&(_, a)| a.radix()).collect();
        let mut digits = free
            .iter()
            .map(|&(i, a)| {
                let s = *symbols.get(i)?;
                a.contains(s).then(|| s - a.lo)
            })
            .collect::<Option<Vec<u32>>>()?;
        // Over a domain of 2^40 values or more a fixed point of P has no practical chance, and
        // P alone costs half of P⁻¹(P(x) ± 1): one FF1 evaluation per value instead of two.
        let domain_bits: f64 = radices.iter().map(|&r| f64::from(r).log2()).sum();
        if digits.len() <= MAX_BLOCK_SLOTS && domain_bits >= LARGE_DOMAIN_BITS {
            self.permute_block(tweak, &radices, &mut digits, forward)?;
        } else if digits.len() <= MAX_BLOCK_SLOTS {
            self.permute_block(tweak, &radices, &mut digits, true)?;
            if forward {
                increment(&radices, &mut digits);
            } else {
                decrement(&radices, &mut digits);
            }
            self.permute_block(tweak, &radices, &mut digits, false)?;
        } else {
            // Not P⁻¹(P(x) ± 1) here: the inverse of the chained passes only spreads a change
            // to the neighbouring chunks, so that mask would share most chunks with the value.
            // P alone mixes every chunk into every other; a fixed point of P over at least
            // 10^64 values has no practical chance.
            self.permute_chunked(tweak, &radices, &mut digits, forward)?;
        }
        for (&(i, a), d) in free.iter().zip(digits) {
            symbols[i] = a.lo + d;
        }
        Some(())
    }

    /// The keyed permutation `P` (or `P⁻¹`) of the mixed-radix numbers of `radices`, for more
    /// than [`MAX_BLOCK_SLOTS`] digits: chunks in two chained passes (module doc).
    fn permute_chunked(
        &self,
        tweak: &[u8; 32],
        radices: &[u32],
        digits: &mut [u32],
        forward: bool,
    ) -> Option<()> {
        let n = digits.len();
        // Chunks of 33 to 64 digits: each domain is at least 9^33, far above the tables'.
        let k = n.div_ceil(MAX_BLOCK_SLOTS);
        let chunks: Vec<Range<usize>> = (0..k).map(|i| i * n / k..(i + 1) * n / k).collect();
        let chunk_step = |pass: u8, i: usize, neighbour: Option<usize>, digits: &mut [u32]| {
            let t = chunk_tweak(
                tweak,
                pass,
                i,
                neighbour.map(|j| &digits[chunks[j].clone()]),
            );
            let r = chunks[i].clone();
            self.permute_block(&t, &radices[r.clone()], &mut digits[r], forward)
        };
        let previous = |i: usize| i.checked_sub(1);
        let next = |i: usize| (i + 1 < k).then_some(i + 1);
        if forward {
            // Pass A: each chunk's tweak is the previous chunk's new value.
            for i in 0..k {
                chunk_step(b'A', i, previous(i), digits)?;
            }
            // Pass B: each chunk's tweak is the next chunk's new value.
            for i in (0..k).rev() {
                chunk_step(b'B', i, next(i), digits)?;
            }
        } else {
            // Undo B in the order that leaves each chunk's next neighbour as pass B left it,
            // then A, leaving each previous neighbour as pass A left it.
            for i in 0..k {
                chunk_step(b'B', i, next(i), digits)?;
            }
            for i in (0..k).rev() {
                chunk_step(b'A', i, previous(i), digits)?;
            }
        }
        Some(())
    }

    /// The keyed permutation of one block of digits, as a number of `[0, N)`.
    fn permute_block(
        &self,
        tweak: &[u8; 32],
        radices: &[u32],
        digits: &mut [u32],
        forward: bool,
    ) -> Option<()> {
        let domain = radices.iter().fold(BigUint::from(1u32), |acc, &r| acc * r);
        let x = rank(radices, digits);
        if x >= domain {
            return None;
        }
        let y = match u32::try_from(&domain) {
            Ok(n) if n <= 1 => x,
            Ok(n) if n < TABLE_LIMIT => {
                let table = self.table(tweak, n);
                let map = if forward {
                    &table.forward
                } else {
                    &table.inverse
                };
                BigUint::from(*map.get(usize::try_from(u32::try_from(&x).ok()?).ok()?)?)
            }
            _ => {
                let bits = usize::try_from((&domain - 1u32).bits())
                    .ok()?
                    .max(MIN_FF1_BITS);
                // Cycle walking: stays a permutation of [0, N), and ends since x's cycle
                // under FF1 comes back into [0, N) at the latest at x itself.
                let mut y = self.ff1(tweak, &x, bits, forward)?;
                while y >= domain {
                    y = self.ff1(tweak, &y, bits, forward)?;
                }
                y
            }
        };
        unrank(radices, y, digits)
    }

    /// FF1 encryption (decryption) of `x` as a string of `bits` binary digits.
    fn ff1(&self, tweak: &[u8; 32], x: &BigUint, bits: usize, forward: bool) -> Option<BigUint> {
        let binary = x.to_radix_be(2);
        let mut numerals = vec![0u16; bits];
        let start = bits.checked_sub(binary.len())?;
        for (n, &b) in numerals[start..].iter_mut().zip(&binary) {
            *n = u16::from(b);
        }
        let input = FlexibleNumeralString::from(numerals);
        let output = if forward {
            self.ff1.encrypt(tweak, &input)
        } else {
            self.ff1.decrypt(tweak, &input)
        }
        .ok()?;
        let binary: Vec<u8> = Vec::<u16>::from(output)
            .into_iter()
            .map(|b| b as u8)
            .collect();
        BigUint::from_radix_be(&binary, 2)
    }

    fn lock_tables(&self) -> MutexGuard<'_, TableCache> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The small-domain permutation of `[0, n)` for a format, built on first use.
    fn table(&self, tweak: &[u8; 32], n: u32) -> Arc<Table> {
        let key = (*tweak, n);
        if let Some(table) = self.lock_tables().tables.get(&key) {
            return table.clone();
        }
        // Built outside the lock; two threads may both build it, to the same result.
        let table = Arc::new(self.build_table(tweak, n));
        let mut cache = self.lock_tables();
        if cache.entries + n as usize > MAX_CACHED_ENTRIES {
            cache.tables.clear();
            cache.entries = 0;
        }
        if cache.tables.insert(key, table.clone()).is_none() {
            cache.entries += n as usize;
        }
        table
    }

    /// `[0, n)` sorted by a keyed hash of (tweak, n, element): element `i` goes to its rank.
    fn build_table(&self, tweak: &[u8; 32], n: u32) -> Table {
        let mut base = self.table_key.clone();
        base.update(tweak);
        base.update(&n.to_be_bytes());
        // n < 2^16: every element and rank fits a u16. Ties of the 128-bit sort keys (never
        // seen in practice) are broken by the element.
        let mut order: Vec<(u128, u16)> = (0..n)
            .map(|i| {
                let mut mac = base.clone();
                mac.update(&i.to_be_bytes());
                let tag = mac.finalize().into_bytes();
                let mut key = [0u8; 16];
                key.copy_from_slice(&tag[..16]);
                (u128::from_be_bytes(key), i as u16)
            })
            .collect();
        order.sort_unstable();
        let mut forward = vec![0u16; n as usize];
        let mut inverse = vec![0u16; n as usize];
        for (rank, &(_, i)) in order.iter().enumerate() {
            forward[usize::from(i)] = rank as u16;
            inverse[rank] = i;
        }
        Table { forward, inverse }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const KEY: [u8; 32] = *b"0123456789abcdef0123456789abcdef";
    const BIJECTIVE: [MaskStrategy; 4] = [
        MaskStrategy::Email,
        MaskStrategy::Name,
        MaskStrategy::Phone,
        MaskStrategy::Digits,
    ];

    fn masker() -> Masker {
        Masker::new(&KEY)
    }

    fn mask(m: &Masker, strategy: &MaskStrategy, value: &str) -> String {
        let out = m.mask(strategy, value.as_bytes(), None).expect("not NULL");
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
    }

    fn all_strategies() -> Vec<MaskStrategy> {
        let mut all = BIJECTIVE.to_vec();
        all.extend([
            MaskStrategy::Hash,
            MaskStrategy::Null,
            MaskStrategy::Fixed("xxx".into()),
            MaskStrategy::Redact {
                keep_prefix: 0,
                keep_suffix: 0,
            },
            MaskStrategy::Redact {
                keep_prefix: 2,
                keep_suffix: 3,
            },
        ]);
        all
    }

    /// Masks every value (which must be distinct), checks that no two masks collide, that
    /// every mask unmasks to its value and has its length; returns the masks.
    fn assert_bijective(m: &Masker, strategy: &MaskStrategy, values: &[String]) -> Vec<String> {
        let distinct: HashSet<&String> = values.iter().collect();
        assert_eq!(distinct.len(), values.len(), "test values must be distinct");
        let mut seen = HashSet::new();
        let mut masks = Vec::with_capacity(values.len());
        for v in values {
            let out = mask(m, strategy, v);
            assert_eq!(out.chars().count(), v.chars().count(), "{strategy}: {v:?}");
            assert_eq!(out.len(), v.len(), "{strategy}: bytes of {v:?}");
            assert!(seen.insert(out.clone()), "{strategy}: collision on {out:?}");
            let back = m.unmask(strategy, out.as_bytes());
            assert_eq!(back.as_deref(), Some(v.as_bytes()), "{strategy}: {v:?}");
            masks.push(out);
        }
        masks
    }

    /// `values` masks onto exactly `values` (a permutation of that domain).
    fn assert_permutation_of(m: &Masker, strategy: &MaskStrategy, values: &[String]) {
        let masks = assert_bijective(m, strategy, values);
        let domain: HashSet<&String> = values.iter().collect();
        let image: HashSet<&String> = masks.iter().collect();
        assert_eq!(domain, image, "{strategy}: not a permutation of the domain");
    }

    /// The same value, char by char: which characters are the same and at the same place.
    fn kept_positions(a: &str, b: &str) -> Vec<bool> {
        a.chars().zip(b.chars()).map(|(x, y)| x == y).collect()
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn parses_every_form_and_displays_it_back() {
        let cases = [
            ("email", MaskStrategy::Email),
            ("name", MaskStrategy::Name),
            ("phone", MaskStrategy::Phone),
            ("digits", MaskStrategy::Digits),
            ("hash", MaskStrategy::Hash),
            ("null", MaskStrategy::Null),
            ("fixed:n/a", MaskStrategy::Fixed("n/a".into())),
            ("fixed:a:b", MaskStrategy::Fixed("a:b".into())),
            ("fixed:", MaskStrategy::Fixed(String::new())),
            (
                "redact",
                MaskStrategy::Redact {
                    keep_prefix: 0,
                    keep_suffix: 0,
                },
            ),
            (
                "redact:2:4",
                MaskStrategy::Redact {
                    keep_prefix: 2,
                    keep_suffix: 4,
                },
            ),
        ];
        for (text, strategy) in cases {
            assert_eq!(text.parse::<MaskStrategy>(), Ok(strategy.clone()), "{text}");
            assert_eq!(strategy.to_string().parse(), Ok(strategy), "{text}");
        }
    }

    #[test]
    fn rejects_bad_strategies_naming_the_input_and_the_valid_forms() {
        for bad in [
            "",
            "Email",
            "mail",
            "fixed",
            "redact:",
            "redact:2",
            "redact:a:1",
            "redact:1:-1",
            "redact:1:2:3",
            " email",
        ] {
            let err = bad.parse::<MaskStrategy>().expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains(VALID_FORMS), "{err}");
        }
        let err = "fixed".parse::<MaskStrategy>().unwrap_err().to_string();
        assert!(err.contains("fixed:VALUE"), "{err}");
    }

    #[test]
    fn only_the_permutations_are_bijective() {
        for s in all_strategies() {
            assert_eq!(s.is_bijective(), BIJECTIVE.contains(&s), "{s}");
            if !s.is_bijective() {
                assert_eq!(masker().unmask(&s, b"anything"), None, "{s}");
            }
        }
    }

    #[test]
    fn deterministic_and_keyed_and_independent_of_the_column() {
        let (a, b) = (masker(), masker());
        let other = Masker::new(&[7; 32]);
        for s in all_strategies() {
            if matches!(
                s,
                MaskStrategy::Null | MaskStrategy::Fixed(_) | MaskStrategy::Redact { .. }
            ) {
                continue;
            }
            for v in [
                "alice@example.com",
                "Anne-Marie O'Neil",
                "+1 (555) 010-2030",
                "123456",
            ] {
                let first = mask(&a, &s, v);
                assert_eq!(mask(&a, &s, v), first, "{s}: same masker, same value");
                assert_eq!(mask(&b, &s, v), first, "{s}: same key, another masker");
                assert_ne!(mask(&other, &s, v), first, "{s}: another key");
                assert_ne!(first, v, "{s}");
            }
        }
        // The tweak is the strategy's: the same text masks differently under each.
        let v = "alice123";
        let masks: HashSet<String> = BIJECTIVE.iter().map(|s| mask(&a, s, v)).collect();
        assert_eq!(masks.len(), BIJECTIVE.len());
    }

    #[test]
    fn masker_is_shareable_and_debug_hides_the_key() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Masker>();
        let shown = format!("{:?}", masker());
        assert_eq!(shown, "Masker { .. }");
    }

    #[test]
    fn email_10k_distinct_valid_and_unmaskable() {
        let m = masker();
        let values: Vec<String> = (0..10_000)
            .map(|i| {
                let local = match i % 5 {
                    0 => format!("user{i}"),
                    1 => format!("First.Last{i}"),
                    2 => format!("{}{i}", "x".repeat(1 + i % 4)),
                    3 => format!("JOHN_DOE+tag{i}"),
                    _ => format!("a{i}-b"),
                };
                let domain = match i % 3 {
                    0 => format!("example{}.com", i % 7),
                    1 => format!("Mail-{}.Example.org", i % 7),
                    _ => format!("x{}.io", i % 7),
                };
                format!("{local}@{domain}")
            })
            .collect();
        let masks = assert_bijective(&m, &MaskStrategy::Email, &values);
        for (v, out) in values.iter().zip(&masks) {
            let (local, domain) = out.split_once('@').expect("one @");
            assert!(!local.is_empty() && !domain.contains('@'), "{out}");
            let tld = domain.rsplit('.').next().unwrap();
            assert_eq!(
                tld,
                v.rsplit('.').next().unwrap(),
                "top-level domain kept: {out}"
            );
            assert!(tld.chars().all(|c| c.is_ascii_alphabetic()), "{out}");
            assert!(
                domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
                "{out}"
            );
            for (a, b) in v.chars().zip(out.chars()) {
                // Punctuation kept in place; letters stay letters of their case, digits digits.
                if a.is_ascii_punctuation() {
                    assert_eq!(a, b, "{v} -> {out}");
                }
                assert_eq!(
                    a.is_ascii_lowercase(),
                    b.is_ascii_lowercase(),
                    "{v} -> {out}"
                );
                assert_eq!(
                    a.is_ascii_uppercase(),
                    b.is_ascii_uppercase(),
                    "{v} -> {out}"
                );
                assert_eq!(a.is_ascii_digit(), b.is_ascii_digit(), "{v} -> {out}");
            }
        }
        // Nothing of the local part or domain label leaks through, beyond chance.
        let kept: usize = values
            .iter()
            .zip(&masks)
            .map(|(v, out)| {
                let n = v.find('@').unwrap();
                kept_positions(&v[..n], &out[..n])
                    .iter()
                    .filter(|k| **k)
                    .count()
            })
            .sum();
        let letters: usize = values.iter().map(|v| v.find('@').unwrap()).sum();
        assert!(
            kept * 5 < letters,
            "{kept} of {letters} local-part characters kept"
        );
    }

    #[test]
    fn name_10k_distinct_case_and_punctuation_kept_and_unmaskable() {
        let m = masker();
        let values: Vec<String> = (0..10_000)
            .map(|i| match i % 4 {
                0 => format!("Anne-Marie O'Neil {i}"),
                1 => format!("bob {i}"),
                2 => format!("JOSÉ MARÍA D'ARCY-{i}"),
                _ => format!("Li{i}"),
            })
            .collect();
        let masks = assert_bijective(&m, &MaskStrategy::Name, &values);
        for (v, out) in values.iter().zip(&masks) {
            for (a, b) in v.chars().zip(out.chars()) {
                if matches!(a, ' ' | '-' | '\'') {
                    assert_eq!(a, b, "{v} -> {out}");
                }
                assert_eq!(
                    a.is_ascii_lowercase(),
                    b.is_ascii_lowercase(),
                    "{v} -> {out}"
                );
                assert_eq!(
                    a.is_ascii_uppercase(),
                    b.is_ascii_uppercase(),
                    "{v} -> {out}"
                );
                assert_eq!(a.is_ascii_digit(), b.is_ascii_digit(), "{v} -> {out}");
            }
        }
        assert_eq!(
            mask(&m, &MaskStrategy::Name, "Anne-Marie O'Neil")
                .chars()
                .filter(|c| "-' ".contains(*c))
                .collect::<String>(),
            "- '"
        );
    }

    #[test]
    fn phone_10k_distinct_punctuation_kept_and_unmaskable() {
        let m = masker();
        let values: Vec<String> = (0..10_000)
            .map(|i| {
                if i % 2 == 0 {
                    format!("+1 (555) 01{:04}", i / 2)
                } else {
                    format!("555-{:04}", i / 2)
                }
            })
            .collect();
        let masks = assert_bijective(&m, &MaskStrategy::Phone, &values);
        for (v, out) in values.iter().zip(&masks) {
            for (a, b) in v.chars().zip(out.chars()) {
                assert_eq!(a.is_ascii_digit(), b.is_ascii_digit(), "{v} -> {out}");
                if !a.is_ascii_digit() {
                    assert_eq!(a, b, "{v} -> {out}");
                }
            }
        }
        // Letters in a phone column are masked too.
        let out = mask(&m, &MaskStrategy::Phone, "555-0101 ext 12");
        assert!(!out.contains("ext"), "{out}");
        assert_eq!(&out[3..4], "-");
    }

    #[test]
    fn digits_10k_distinct_magnitude_kept_and_unmaskable() {
        let m = masker();
        let values: Vec<String> = (0..10_000u64)
            .map(|i| match i % 5 {
                0 => i.to_string(),
                1 => format!("{i:07}"),
                2 => format!("-{}", i * 7_919),
                3 => (1_000_000_000_000 + i * 104_729).to_string(),
                _ => format!("{}.{:02}", i, i % 100),
            })
            .collect();
        let masks = assert_bijective(&m, &MaskStrategy::Digits, &values);
        for (v, out) in values.iter().zip(&masks) {
            assert_eq!(v.starts_with('-'), out.starts_with('-'), "{v} -> {out}");
            let (vd, od) = (v.trim_start_matches('-'), out.trim_start_matches('-'));
            let zeros = vd.len() - vd.trim_start_matches('0').len();
            assert_eq!(
                &od[..zeros],
                &vd[..zeros],
                "leading zeros kept: {v} -> {out}"
            );
            if zeros < vd.len() && vd.as_bytes()[zeros] != b'.' {
                assert_ne!(
                    od.as_bytes()[zeros],
                    b'0',
                    "no leading zero added: {v} -> {out}"
                );
            }
            assert_eq!(v.find('.'), out.find('.'), "{v} -> {out}");
            assert!(od.chars().all(|c| c.is_ascii_digit() || c == '.'), "{out}");
        }
    }

    #[test]
    fn short_digit_domains_are_exhaustive_permutations() {
        let m = masker();
        let one: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let two: Vec<String> = (0..100).map(|i| format!("{i:02}")).collect();
        let negative: Vec<String> = (0..100).map(|i| format!("-{i}")).collect();
        for domain in [&one, &two, &negative] {
            assert_permutation_of(&m, &MaskStrategy::Digits, domain);
        }
        // (Not `negative` for phones: "-5" and "-05" are both phone formats.)
        for domain in [&one, &two] {
            assert_permutation_of(&m, &MaskStrategy::Phone, domain);
        }
        // Every value moves, except those alone in their format ("0", "00", "-0").
        for v in one.iter().chain(&two).chain(&negative) {
            let out = mask(&m, &MaskStrategy::Digits, v);
            assert_eq!(
                out == *v,
                ["0", "00", "-0"].contains(&v.as_str()),
                "{v} -> {out}"
            );
        }
        // Single digits 1-9 stay 1-9 (an INT keeps its magnitude).
        for d in 1..10 {
            assert_ne!(mask(&m, &MaskStrategy::Digits, &d.to_string()), "0");
        }
    }

    #[test]
    fn short_names_and_emails_are_bijective() {
        let m = masker();
        let letters: Vec<String> = ('a'..='z').chain('A'..='Z').map(String::from).collect();
        assert_permutation_of(&m, &MaskStrategy::Name, &letters);
        let pairs: Vec<String> = ('a'..='z')
            .flat_map(|a| ('a'..='z').map(move |b| format!("{a}{b}")))
            .collect();
        assert_permutation_of(&m, &MaskStrategy::Name, &pairs);
        let bob: Vec<String> = ["Bob", "Ann", "Li", "Jo-Ann", "O'Day"]
            .map(String::from)
            .to_vec();
        assert_bijective(&m, &MaskStrategy::Name, &bob);
        // Emails with a 2-character local part and a 1-letter domain label: all 26^3 of them.
        let emails: Vec<String> = pairs
            .iter()
            .flat_map(|p| ('a'..='z').map(move |d| format!("{p}@{d}.io")))
            .collect();
        assert_permutation_of(&m, &MaskStrategy::Email, &emails);
    }

    #[test]
    fn medium_domains_cycle_walk_bijectively() {
        // 5-digit numbers: 90,000 values, between the tables and FF1's own minimum.
        let m = masker();
        let values: Vec<String> = (10_000..13_000).map(|i: u32| i.to_string()).collect();
        for out in assert_bijective(&m, &MaskStrategy::Digits, &values) {
            assert!(!out.starts_with('0') && out.len() == 5, "{out}");
        }
    }

    #[test]
    fn long_values_are_chunked_bijectively_and_every_character_matters() {
        let m = masker();
        let long = "Wolfeschlegelsteinhausenbergerdorff ".repeat(6);
        let values: Vec<String> = (0..50).map(|i| format!("{long}{i}")).collect();
        let masks = assert_bijective(&m, &MaskStrategy::Name, &values);
        // No chunk of the value survives in its mask: the 6 spaces are kept, a letter stays by
        // chance once in 26 (about 14 in all; keeping a chunk would keep over 50).
        for (v, out) in values.iter().zip(&masks) {
            let kept = kept_positions(v, out).iter().filter(|k| **k).count();
            assert!(kept < 40, "{kept} characters kept: {out}");
        }
        // Changing only the last character changes the beginning of the mask too.
        assert_ne!(masks[1][..40], masks[2][..40]);
        let first_changed = format!("X{}", &values[1][1..]);
        assert_ne!(
            mask(&m, &MaskStrategy::Name, &first_changed)[150..],
            masks[1][150..]
        );
    }

    #[test]
    fn non_ascii_characters_are_permuted_within_their_range() {
        let m = masker();
        // 'é' is not kept, but stays a 2-byte Latin character.
        let values: Vec<String> = (0..200).map(|i| format!("José {i}")).collect();
        let masks = assert_bijective(&m, &MaskStrategy::Name, &values);
        let accents: HashSet<char> = masks.iter().map(|s| s.chars().nth(3).unwrap()).collect();
        assert!(accents.len() > 50, "{accents:?}");
        assert!(accents
            .iter()
            .all(|&c| (0xA0..=0x2FF).contains(&u32::from(c))));
        // CJK stays CJK, emoji stay pictographs, and nothing is left as it was.
        let text = "张伟 ❤ 🍕 Ωμέγα";
        for s in BIJECTIVE {
            let out = mask(&m, &s, text);
            assert_eq!(out.len(), text.len(), "{s}: {out}");
            assert!(
                out.chars()
                    .zip(text.chars())
                    .all(|(o, t)| o.len_utf8() == t.len_utf8()),
                "{s}: {out}"
            );
            let kept = kept_positions(text, &out);
            assert!(kept.iter().filter(|k| **k).count() <= 3, "{s}: {out}");
            assert!(out
                .chars()
                .take(2)
                .all(|c| ('\u{4E00}'..='\u{9FFF}').contains(&c)));
            let pizza = out.chars().nth(5).unwrap();
            assert!(('\u{1F300}'..='\u{1FAFF}').contains(&pizza), "{s}: {out}");
            assert_eq!(
                m.unmask(&s, out.as_bytes()).as_deref(),
                Some(text.as_bytes())
            );
        }
    }

    #[test]
    fn non_ascii_ranges_cover_every_scalar_value_once() {
        let mut next = 0x80;
        for a in NON_ASCII {
            assert_eq!(a.lo, if next == 0xD800 { 0xE000 } else { next });
            let (lo, hi) = (char::from_u32(a.lo).unwrap(), char::from_u32(a.hi).unwrap());
            assert_eq!(lo.len_utf8(), hi.len_utf8(), "one UTF-8 length per range");
            next = a.hi + 1;
        }
        assert_eq!(next, 0x11_0000);
        let codes: HashSet<u8> = NON_ASCII
            .iter()
            .chain(&[DIGIT, NONZERO_DIGIT, LOWER, UPPER, BYTE])
            .map(|a| a.code)
            .collect();
        assert_eq!(codes.len(), NON_ASCII.len() + 5);
        assert!(!codes.contains(&0));
    }

    #[test]
    fn invalid_utf8_masks_to_other_bytes_of_the_same_length() {
        let m = masker();
        let values: [&[u8]; 6] = [
            b"\xff",
            b"\xc3",
            b"abc\xff",
            b"\x80\x80\x80\x80\x80\x80\x80\x80",
            b"jos\xe9@example.com",
            b"\xf0\x9f\x8d",
        ];
        for s in all_strategies() {
            for v in values {
                let Some(out) = m.mask(&s, v, None) else {
                    assert_eq!(s, MaskStrategy::Null);
                    continue;
                };
                assert_ne!(out, v, "{s}: {v:?}");
                if s.is_bijective() {
                    assert_eq!(out.len(), v.len(), "{s}: {v:?}");
                    assert!(std::str::from_utf8(&out).is_err(), "{s}: {out:?}");
                    assert_eq!(m.unmask(&s, &out).as_deref(), Some(v), "{s}: {v:?}");
                }
                if matches!(s, MaskStrategy::Redact { .. }) {
                    assert_eq!(out, vec![b'*'; v.len()]);
                }
            }
        }
        // All 128 one-byte non-UTF-8 strings: a permutation without fixed points.
        let domain: HashSet<Vec<u8>> = (0x80..=0xFF).map(|b| vec![b]).collect();
        let image: HashSet<Vec<u8>> = domain
            .iter()
            .map(|v| m.mask(&MaskStrategy::Digits, v, None).unwrap())
            .collect();
        assert_eq!(image, domain);
    }

    #[test]
    fn hash_is_keyed_hmac_hex_cut_to_the_column() {
        let m = masker();
        let full = mask(&m, &MaskStrategy::Hash, "alice@example.com");
        assert_eq!(full.len(), 64);
        assert!(full
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let mut mac = keyed(&{
            let mut d = keyed(&KEY);
            d.update(b"devinprod dbproxy mask v1: hash key");
            <[u8; 32]>::from(d.finalize().into_bytes())
        });
        mac.update(b"hash\0alice@example.com");
        let expected: String =
            mac.finalize()
                .into_bytes()
                .iter()
                .fold(String::new(), |mut s, b| {
                    let _ = write!(s, "{b:02x}");
                    s
                });
        assert_eq!(full, expected);
        let cut = m.mask(&MaskStrategy::Hash, b"alice@example.com", Some(10));
        assert_eq!(cut.as_deref(), Some(&full.as_bytes()[..10]));
        assert_ne!(mask(&m, &MaskStrategy::Hash, "bob@example.com"), full);
    }

    #[test]
    fn null_fixed_and_redact() {
        let m = masker();
        assert_eq!(m.mask(&MaskStrategy::Null, b"secret", None), None);
        assert_eq!(m.mask(&MaskStrategy::Null, b"", Some(3)), None);
        let fixed = MaskStrategy::Fixed("REDACTED".into());
        assert_eq!(
            m.mask(&fixed, b"x", None).as_deref(),
            Some(&b"REDACTED"[..])
        );
        assert_eq!(m.mask(&fixed, b"x", Some(3)).as_deref(), Some(&b"RED"[..]));
        let redact = |p, s, v: &str| {
            let strategy = MaskStrategy::Redact {
                keep_prefix: p,
                keep_suffix: s,
            };
            mask(&m, &strategy, v)
        };
        assert_eq!(redact(0, 0, "secret"), "******");
        assert_eq!(redact(2, 2, "4111111111111111"), "41************11");
        assert_eq!(redact(0, 4, "4111111111111111"), "************1111");
        // By characters, not bytes.
        assert_eq!(redact(1, 1, "Jörg Müller"), "J*********r");
        assert_eq!(redact(1, 0, "日本語"), "日**");
        // Keeping it all would reveal it all.
        assert_eq!(redact(2, 2, "abcd"), "****");
        assert_eq!(redact(usize::MAX, usize::MAX, "abc"), "***");
        assert_eq!(redact(0, 0, ""), "");
    }

    #[test]
    fn output_never_exceeds_max_chars() {
        let m = masker();
        for s in all_strategies() {
            for max in [0, 1, 5, 64] {
                for v in [
                    "",
                    "alice@example.com",
                    "Jörg Müller-Lüdenscheidt",
                    "🍕🍕🍕🍕🍕🍕",
                ] {
                    if let Some(out) = m.mask(&s, v.as_bytes(), Some(max)) {
                        let out = String::from_utf8(out).expect("cut at a character boundary");
                        assert!(out.chars().count() <= max, "{s} {max}: {out}");
                        if v.chars().count() <= max && s.is_bijective() {
                            assert_eq!(out.chars().count(), v.chars().count());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let m = masker();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..300 {
            let len = rng.below(64);
            let value: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let max = (rng.below(3) > 0).then(|| rng.below(80));
            for s in all_strategies() {
                let out = m.mask(&s, &value, max);
                assert_eq!(out.is_none(), s == MaskStrategy::Null);
                if let Some(out) = &out {
                    match std::str::from_utf8(out) {
                        Ok(text) => assert!(text.chars().count() <= max.unwrap_or(usize::MAX)),
                        Err(_) => assert!(out.len() <= max.unwrap_or(usize::MAX)),
                    }
                }
                if s.is_bijective() {
                    let out = m.mask(&s, &value, None).unwrap();
                    assert_eq!(out.len(), value.len(), "{s}: {value:?}");
                    assert_eq!(m.unmask(&s, &out).as_deref(), Some(&value[..]), "{s}");
                }
                // Unmasking arbitrary input must not panic either.
                let _ = m.unmask(&s, &value);
            }
        }
    }

    #[test]
    fn random_text_round_trips() {
        let m = masker();
        let pool: Vec<char> = "aZ09 @.-+()'_éßЖع张한😀\u{80}\u{10FFFF}\u{E000}\u{FFFF}\u{7F}\t"
            .chars()
            .collect();
        let mut rng = XorShift(42);
        for _ in 0..200 {
            // Up to 150 characters: beyond one block of 64 free characters.
            let len = rng.below(150);
            let value: String = (0..len).map(|_| pool[rng.below(pool.len())]).collect();
            for s in BIJECTIVE {
                let out = mask(&m, &s, &value);
                assert_eq!(out.len(), value.len(), "{s}: {value:?}");
                assert_eq!(out.chars().count(), value.chars().count(), "{s}: {value:?}");
                let back = m.unmask(&s, out.as_bytes());
                assert_eq!(back.as_deref(), Some(value.as_bytes()), "{s}: {value:?}");
            }
        }
    }
}
