//! Reading members of a JSON frame by JSON pointer (RFC 6901) without parsing the rest: the
//! load client reads a sequence number and a timestamp from millions of frames a second, and a
//! full parse of each would make it the bottleneck. The scanner walks the path and skips
//! every value it does not need by matching brackets and strings; it stops at the member.
//! [`Fields`] reads several top-level members in one pass. Strings, digits and keys go eight
//! bytes at a time (SWAR: plain `u64` arithmetic, no `unsafe`).
//!
//! Frames that are not well-formed JSON may give `None` or a wrong answer for the member, never
//! a panic; the load client counts frames without the member separately.

/// A parsed JSON pointer such as `/data/sched` (`""` is the whole document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    tokens: Vec<Token>,
}

/// One reference token of a pointer, prepared for matching keys without decoding them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    /// The key, unescaped (`~1` already `/`).
    name: Vec<u8>,
    /// The token as an array index, if it is one.
    index: Option<usize>,
    /// For a key of at most seven bytes that JSON writes without escapes: the eight bytes a
    /// string of exactly this key starts with after its opening quote (the key, then the
    /// closing quote) as a little-endian word, and the mask of the bytes that count. One
    /// load, one mask and one compare then tell a matching key from any other.
    word: Option<(u64, u64)>,
}

impl Token {
    fn new(name: Vec<u8>) -> Token {
        let index = std::str::from_utf8(&name).ok().and_then(|t| t.parse().ok());
        let plain = name.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\');
        let word = (plain && name.len() < 8).then(|| {
            let mut bytes = [0u8; 8];
            bytes[..name.len()].copy_from_slice(&name);
            bytes[name.len()] = b'"';
            let mask = u64::MAX >> (8 * (7 - name.len()));
            (mask, u64::from_le_bytes(bytes))
        });
        Token { name, index, word }
    }
}

impl Pointer {
    /// Parses `/a/b/0`; `~1` is `/` and `~0` is `~` inside a token.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer { tokens: Vec::new() });
        }
        let rest = text.strip_prefix('/').ok_or_else(|| {
            format!("a JSON pointer starts with `/` (got `{text}`), e.g. /seq or /data/ts")
        })?;
        let tokens = rest
            .split('/')
            .map(|t| Token::new(t.replace("~1", "/").replace("~0", "~").into_bytes()))
            .collect();
        Ok(Pointer { tokens })
    }

    /// The raw text of the value at this pointer in `json`.
    pub fn find<'a>(&self, json: &'a [u8]) -> Option<&'a [u8]> {
        let at = self.locate(json)?;
        let end = skip_value(json, at)?;
        Some(&json[at..end])
    }

    /// Where the value at this pointer starts in `json`.
    #[inline]
    fn locate(&self, json: &[u8]) -> Option<usize> {
        let mut at = skip_ws(json, 0);
        for token in &self.tokens {
            at = match json.get(at)? {
                b'{' => member(json, at + 1, token)?,
                b'[' => element(json, at + 1, token.index?)?,
                _ => return None,
            };
        }
        Some(at)
    }

    /// The value at this pointer as an unsigned integer (a JSON number without fraction, or a
    /// string of digits).
    pub fn u64_in(&self, json: &[u8]) -> Option<u64> {
        u64_of(self.find(json)?)
    }

    /// The value at this pointer as a number (integer or float).
    pub fn f64_in(&self, json: &[u8]) -> Option<f64> {
        f64_of(self.find(json)?)
    }

    /// The key this pointer names at the top level of a document (`/seq`), if it names one.
    fn top_level(&self) -> Option<&Token> {
        match self.tokens.as_slice() {
            [t] => Some(t),
            _ => None,
        }
    }
}

/// Several pointers read from one frame. When each names a member at the top level (`/seq`,
/// `/ts`), one pass over the top-level object finds them all and stops at the last one found;
/// otherwise each is looked up on its own.
#[derive(Debug, Clone)]
pub struct Fields<const N: usize> {
    pointers: [Option<Pointer>; N],
    /// Whether every pointer names a top-level member, so one pass serves them all.
    top_level: bool,
    /// Per slot, the key word and mask of its token ([`Token::word`]); `(0, 1)`, which no word
    /// matches, for an empty slot or a token without one.
    words: [(u64, u64); N],
    /// Whether some slot's token has no word, so keys the words miss are compared as text.
    by_text: bool,
}

impl<const N: usize> Fields<N> {
    /// Reads these pointers (`None`: a slot left empty).
    ///
    /// # Panics
    /// If `N` is over 8 (the slots found are kept as bits of a byte).
    pub fn new(pointers: [Option<Pointer>; N]) -> Self {
        assert!(N <= 8, "at most eight fields (a byte of flags)");
        let token = |k: usize| pointers[k].as_ref().and_then(Pointer::top_level);
        let top_level = pointers.iter().flatten().all(|p| p.top_level().is_some());
        let words = std::array::from_fn(|k| token(k).and_then(|t| t.word).unwrap_or((0, 1)));
        let by_text = (0..N).any(|k| token(k).is_some_and(|t| t.word.is_none()));
        Fields {
            pointers,
            top_level,
            words,
            by_text,
        }
    }

    /// Whether slot `k` holds a pointer.
    pub fn has(&self, k: usize) -> bool {
        self.pointers.get(k).is_some_and(Option::is_some)
    }

    /// The raw text of each pointer's value in `json` (the first member of a name counts, as
    /// with [`Pointer::find`]).
    #[inline]
    pub fn raw<'a>(&self, json: &'a [u8]) -> [Option<&'a [u8]>; N] {
        let mut out = [None; N];
        if self.top_level {
            self.one_pass(json, &mut out);
        } else {
            for (slot, p) in out.iter_mut().zip(&self.pointers) {
                *slot = p.as_ref().and_then(|p| p.find(json));
            }
        }
        out
    }

    /// The key of slot `k` as text (a top-level pointer's one token).
    fn name(&self, k: usize) -> Option<&[u8]> {
        let t = self.pointers[k].as_ref()?.top_level()?;
        Some(&t.name)
    }

    #[inline]
    fn one_pass<'a>(&self, b: &'a [u8], out: &mut [Option<&'a [u8]>; N]) -> Option<()> {
        // One flag per slot still to find.
        let mut missing: u8 = (0..N).filter(|&k| self.has(k)).map(|k| 1 << k).sum();
        let mut i = skip_ws(b, 0);
        if *b.get(i)? != b'{' {
            return None;
        }
        i += 1;
        while missing != 0 {
            loop {
                match *b.get(i)? {
                    b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
                    b'"' => break,
                    _ => return None, // `}`: the rest are not there
                }
            }
            // Which slots this key is: by word where a slot has one, else by its text.
            let mut hit: u8 = 0;
            let mut end = 0;
            let after_quote = word_at(b, i + 1);
            if let Some(w) = after_quote {
                for (k, &(mask, want)) in self.words.iter().enumerate() {
                    if w & mask == want {
                        hit |= 1 << k;
                        // The key's length is where its closing quote is in the mask.
                        end = i + 1 + (mask.count_ones() / 8) as usize;
                    }
                }
            }
            if hit == 0 {
                let escaped;
                (end, escaped) = skip_string_noting_escapes(b, i)?;
                if escaped || self.by_text || after_quote.is_none() {
                    hit = self.by_name(&b[i..end], escaped)?;
                }
            }
            i = value_start(b, end)?;
            let value_end = skip_value(b, i)?;
            let new = hit & missing;
            if new != 0 {
                for (k, slot) in out.iter_mut().enumerate() {
                    if new & (1 << k) != 0 {
                        *slot = Some(&b[i..value_end]);
                    }
                }
                missing &= !new;
            }
            i = value_end;
        }
        Some(())
    }

    /// The slots whose key is the JSON string `key` (quotes included), compared as text; only
    /// for keys the words could not decide (escaped, long, or near the end of the frame).
    #[cold]
    fn by_name(&self, key: &[u8], escaped: bool) -> Option<u8> {
        let decoded;
        let name = if escaped {
            decoded = serde_json::from_slice::<String>(key).ok()?;
            decoded.as_bytes()
        } else {
            &key[1..key.len() - 1]
        };
        Some(
            (0..N)
                .filter(|&k| self.name(k) == Some(name))
                .map(|k| 1 << k)
                .sum(),
        )
    }
}

/// A raw JSON value as an unsigned integer: a number without fraction or exponent, or a string
/// of digits.
pub fn u64_of(raw: &[u8]) -> Option<u64> {
    let digits = match raw {
        [b'"', inner @ .., b'"'] => inner,
        _ => raw,
    };
    if digits_end(digits, 0) != digits.len() {
        return None;
    }
    parse_digits(digits)
}

/// A raw JSON value as a finite number (integer or float).
pub fn f64_of(raw: &[u8]) -> Option<f64> {
    if let Some(v) = u64_of(raw) {
        return Some(v as f64);
    }
    let v: f64 = std::str::from_utf8(raw).ok()?.parse().ok()?;
    v.is_finite().then_some(v)
}

/// The value of a run of ASCII digits (the caller has checked they are digits), eight at a
/// time (SWAR); `None` if empty or over u64. Up to 19 digits cannot overflow, so only the
/// twentieth is checked.
fn parse_digits(d: &[u8]) -> Option<u64> {
    debug_assert!(d.iter().all(u8::is_ascii_digit));
    let (d, last) = match d.len() {
        0 | 21.. => return None,
        20 => (&d[..19], Some(d[19])),
        _ => (d, None),
    };
    // The leading digits that do not fill a word one by one, then whole words.
    let (head, words) = d.split_at(d.len() % 8);
    let mut v = head.iter().fold(0u64, |v, &b| v * 10 + u64::from(b - b'0'));
    for c in words.chunks_exact(8) {
        v = v * 100_000_000 + eight_digits(u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    match last {
        Some(b) => v.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        None => Some(v),
    }
}

/// Eight ASCII digits, the first in the lowest byte, as their value: neighbouring digits are
/// combined in pairs, then pairs of pairs, then the two halves, each step in every lane at once.
fn eight_digits(v: u64) -> u64 {
    let v = v - 0x3030_3030_3030_3030;
    let v = (v * 10 + (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v * 100 + (v >> 16)) & 0x0000_ffff_0000_ffff;
    (v * 10_000 + (v >> 32)) & 0xffff_ffff
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Inside an object (just after `{`): the start of the value whose key is `token`.
#[inline]
fn member(b: &[u8], mut i: usize, token: &Token) -> Option<usize> {
    loop {
        // Whitespace and the comma before a key.
        loop {
            match *b.get(i)? {
                b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
                b'"' => break,
                _ => return None, // `}`: not here (or not JSON)
            }
        }
        let (end, matches) = match (token.word, word_at(b, i + 1)) {
            (Some((mask, want)), Some(w)) if w & mask == want => (i + token.name.len() + 2, true),
            _ => {
                let (end, escaped) = skip_string_noting_escapes(b, i)?;
                let raw = &b[i + 1..end - 1];
                // An escaped key can still spell the token (`"s\u0065q"`).
                let matches = if escaped {
                    serde_json::from_slice::<String>(&b[i..end])
                        .ok()?
                        .as_bytes()
                        == token.name
                } else {
                    raw == token.name
                };
                (end, matches)
            }
        };
        i = value_start(b, end)?;
        if matches {
            return Some(i);
        }
        i = skip_value(b, i)?;
    }
}

/// Just past a key (at `i`): where its value starts, after the colon and any whitespace.
#[inline]
fn value_start(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match *b.get(i)? {
            b':' => return Some(skip_ws(b, i + 1)),
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            _ => return None,
        }
    }
}

/// Inside an array (just after `[`): the start of element `index`.
fn element(b: &[u8], mut i: usize, index: usize) -> Option<usize> {
    let mut n = 0;
    loop {
        i = skip_ws(b, i);
        match *b.get(i)? {
            b']' => return None,
            b',' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        if n == index {
            return Some(i);
        }
        i = skip_value(b, i)?;
        n += 1;
    }
}

/// Every byte of a word set to `b`.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// The eight bytes of `b` from `i` as a little-endian word (the first byte lowest), if there
/// are eight.
#[inline]
fn word_at(b: &[u8], i: usize) -> Option<u64> {
    let eight: [u8; 8] = b.get(i..i + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(eight))
}

/// The high bit set in the first zero byte of `x` (and possibly in later bytes; only the
/// lowest set bit is exact): the classic zero-byte test. `w ^ splat(c)` finds `c` in `w`.
#[inline]
fn zero_byte_flags(x: u64) -> u64 {
    x.wrapping_sub(splat(1)) & !x & splat(0x80)
}

/// The index, within the word, of the byte whose flag is the lowest set bit of `flags`.
#[inline]
fn first_flagged(flags: u64) -> usize {
    (flags.trailing_zeros() / 8) as usize
}

/// The index just past the run of ASCII digits starting at `i`, eight bytes at a time.
#[inline]
fn digits_end(b: &[u8], mut i: usize) -> usize {
    while let Some(w) = word_at(b, i) {
        // A byte is a digit when its high nibble is 3 and adding 6 keeps it 3 (0x30..=0x39).
        // Adding 6 carries only out of a byte of 0xfa or more, which is not a digit, and a
        // carry only disturbs the bytes after it, so the first non-digit is always exact.
        let odd = ((w & splat(0xf0)) ^ splat(0x30))
            | ((w.wrapping_add(splat(0x06)) & splat(0xf0)) ^ splat(0x30));
        if odd == 0 {
            i += 8;
            continue;
        }
        // A flag in the high bit of every non-zero byte of `odd`, exact in every lane.
        let flags = (((odd & splat(0x7f)) + splat(0x7f)) | odd) & splat(0x80);
        return i + first_flagged(flags);
    }
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// The index just past the string starting at `i` (on its opening quote).
#[inline]
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    skip_string_noting_escapes(b, i).map(|(end, _)| end)
}

/// The index just past the string starting at `i` (on its opening quote), and whether it holds
/// an escape; eight bytes at a time: only a quote or a backslash stops the scan.
#[inline]
fn skip_string_noting_escapes(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        let k = match word_at(b, j) {
            Some(w) => {
                let flags = zero_byte_flags(w ^ splat(b'"')) | zero_byte_flags(w ^ splat(b'\\'));
                if flags == 0 {
                    j += 8;
                    continue;
                }
                j + first_flagged(flags)
            }
            None => memchr::memchr2(b'"', b'\\', b.get(j..)?)? + j,
        };
        if b[k] == b'"' {
            return Some((k + 1, escaped));
        }
        // A backslash escapes the byte after it.
        escaped = true;
        j = k + 2;
    }
}

/// The index just past the value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        first => {
            // A number's digits go by eight at a time; a sign, fraction, exponent or a
            // literal (`true`) byte by byte up to the delimiter.
            let mut j = if first.is_ascii_digit() {
                digits_end(b, i)
            } else {
                i
            };
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_members_at_any_depth() {
        let doc = br#"{"seq":41,"type":"agent_thinking","ts":1700000000123456789,
            "data":{"to":3,"text":"a \"quoted\" } ] brace","sched":"17","list":[10,{"x":[1,2]},30]},
            "we/ird~":5}"#;
        let p = |s: &str| Pointer::parse(s).unwrap();
        assert_eq!(p("/seq").u64_in(doc), Some(41));
        assert_eq!(p("/ts").u64_in(doc), Some(1_700_000_000_123_456_789));
        assert_eq!(
            p("/data/sched").u64_in(doc),
            Some(17),
            "a string of digits counts"
        );
        assert_eq!(p("/data/list/2").u64_in(doc), Some(30));
        assert_eq!(p("/data/list/1/x/1").u64_in(doc), Some(2));
        assert_eq!(p("/we~1ird~0").u64_in(doc), Some(5));
        assert_eq!(p("/type").find(doc), Some(&b"\"agent_thinking\""[..]));
        assert_eq!(p("/data/text").u64_in(doc), None);
        assert_eq!(p("/missing").find(doc), None);
        assert_eq!(p("/data/list/9").find(doc), None);
        assert_eq!(p("/seq/deeper").find(doc), None);
        assert!(Pointer::parse("seq").is_err());
        assert_eq!(p("/f").f64_in(br#"{"f":1.5e3}"#), Some(1500.0));
        assert_eq!(p("/f").u64_in(br#"{"f":1.5e3}"#), None, "not an integer");
        assert_eq!(
            p("/seq").u64_in(br#"{"s\u0065q":7}"#),
            Some(7),
            "an escaped key"
        );
        assert_eq!(p("/seq").u64_in(br#"{"seqq":1,"seq":2}"#), Some(2));
        assert_eq!(
            p("/n").u64_in(br#"{"n":99999999999999999999}"#),
            None,
            "overflow"
        );
    }

    #[test]
    fn digits_parse_eight_at_a_time() {
        for v in [
            0u64,
            7,
            12345678,
            123456789,
            1_795_337_896_774_470_448,
            u64::MAX,
        ] {
            assert_eq!(parse_digits(v.to_string().as_bytes()), Some(v), "{v}");
        }
        assert_eq!(parse_digits(b"18446744073709551616"), None, "u64::MAX + 1");
        assert_eq!(parse_digits(b"99999999999999999999"), None);
        assert_eq!(parse_digits(b"00000000000000000042"), Some(42));
        assert_eq!(parse_digits(b""), None);
    }

    proptest! {
        #[test]
        fn digits_agree_with_str_parse(v in any::<u64>()) {
            prop_assert_eq!(parse_digits(v.to_string().as_bytes()), Some(v));
        }
    }

    #[test]
    fn garbage_gives_none_never_a_panic() {
        let p = Pointer::parse("/a/b").unwrap();
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\"",
            b"{\"a\":{\"b\"",
            b"[1,2",
            b"\"unterminated",
            b"{\"a\":[}",
        ] {
            let _ = p.find(bad);
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            any::<u32>().prop_map(|n| serde_json::json!(n)),
            "[a-z:,\"\\\\{}\\[\\] ]{0,40}".prop_map(serde_json::Value::String),
            any::<u64>().prop_map(|n| serde_json::json!(n)),
            // Eighths print exactly, so serde_json reads back the same number.
            any::<i32>().prop_map(|n| serde_json::json!(f64::from(n) / 8.0)),
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z:,/~\"\\\\]{1,10}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let t = k.replace('~', "~0").replace('/', "~1");
                    pointers(x, format!("{at}/{t}"), out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    pointers(x, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    proptest! {
        /// Every pointer into a document finds exactly the value serde_json finds there.
        #[test]
        fn agrees_with_serde_json(v in json_value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_vec_pretty(&v).unwrap() } else { serde_json::to_vec(&v).unwrap() };
            let mut ps = Vec::new();
            pointers(&v, String::new(), &mut ps);
            for p in ps {
                let want = v.pointer(&p).unwrap();
                let raw = Pointer::parse(&p).unwrap().find(&text).expect("found");
                let got: serde_json::Value = serde_json::from_slice(raw).unwrap();
                prop_assert_eq!(&got, want, "pointer {}", p);
            }
        }
    }

    proptest! {
        /// Reading several top-level members in one pass gives what each pointer finds alone,
        /// whatever the keys (escaped, long, repeated) and wherever the members are.
        #[test]
        fn one_pass_agrees_with_each_pointer(
            members in prop::collection::vec(("[a-z:,{\"\\\\]{1,10}", json_value()), 0..6),
            picks in prop::collection::vec(0usize..8, 3),
            escape_keys in any::<bool>(),
            pretty in any::<bool>(),
        ) {
            // A document with members in this order, duplicates kept (first one counts).
            let mut text = String::from("{");
            for (n, (k, v)) in members.iter().enumerate() {
                if n > 0 { text.push(','); }
                if pretty { text.push_str("\n  "); }
                let key = if escape_keys {
                    // Every `e` as `\u0065`: the same key, spelled with escapes.
                    serde_json::to_string(k).unwrap().replace('e', "\\u0065")
                } else {
                    serde_json::to_string(k).unwrap()
                };
                text.push_str(&format!("{key}:{}", serde_json::to_string(v).unwrap()));
            }
            text.push('}');
            let name = |p: usize| match members.get(p) {
                Some((k, _)) => k.clone(),
                None => format!("absent{p}"),
            };
            let ptrs: [Option<Pointer>; 3] = std::array::from_fn(|k| {
                let t = name(picks[k]).replace('~', "~0").replace('/', "~1");
                (picks[k] != 7).then(|| Pointer::parse(&format!("/{t}")).unwrap())
            });
            let fields = Fields::new(ptrs.clone());
            let got = fields.raw(text.as_bytes());
            for k in 0..3 {
                let want = ptrs[k].as_ref().and_then(|p| p.find(text.as_bytes()));
                prop_assert_eq!(got[k], want, "slot {} in {}", k, text);
            }
        }
    }

    #[test]
    fn fields_read_the_frames_servers_send() {
        let p = |s: &str| Some(Pointer::parse(s).unwrap());
        let f = Fields::new([p("/seq"), p("/ts"), p("/a_long_key_name")]);
        for (frame, want) in [
            (
                &br#"{"seq":12345,"type":"agent_thinking","ts":1795337896774470448,"a_long_key_name":"v","data":{"pad":"xxxx"}}"#[..],
                [&b"12345"[..], b"1795337896774470448", br#""v""#],
            ),
            // Colons, commas, brackets and quotes' neighbours inside strings, across words.
            (
                br#"{"type":"a:b,{c}[d]: ","x":":","seq":1,"ts":"2","a_long_key_name":{"k":1}}"#,
                [b"1", br#""2""#, br#"{"k":1}"#],
            ),
            (
                br#"{"k:y":"seq","seq":3,"t":"ts:","ts":4,"a_long_key_name":[1],"z":{"seq":9}}"#,
                [b"3", b"4", b"[1]"],
            ),
        ] {
            let frame_text = String::from_utf8_lossy(frame);
            assert_eq!(f.raw(frame), want.map(Some), "{frame_text}");
        }
    }

    #[test]
    fn fields_read_nested_pointers_one_by_one() {
        let doc = br#"{"seq":3,"data":{"t":17,"s":"19"}}"#;
        let p = |s: &str| Some(Pointer::parse(s).unwrap());
        let f = Fields::new([p("/seq"), p("/data/t"), p("/data/s")]);
        let [seq, t, s] = f.raw(doc);
        assert_eq!(
            (seq, t, s),
            (Some(&b"3"[..]), Some(&b"17"[..]), Some(&b"\"19\""[..]))
        );
        assert_eq!(s.and_then(u64_of), Some(19), "a string of digits counts");
        assert!(f.has(2) && !Fields::new([p("/seq"), None]).has(1));
        let [only] = Fields::new([p("/seq")]).raw(b"[1,2]");
        assert_eq!(only, None, "not an object");
        assert_eq!(u64_of(b"1.5"), None);
        assert_eq!(u64_of(b"-1"), None);
        assert_eq!(f64_of(b"-1.5e1"), Some(-15.0));
    }
}
