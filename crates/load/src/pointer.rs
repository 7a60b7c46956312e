//! Reading one member of a JSON frame by JSON pointer (RFC 6901) without parsing the rest: the
//! load client reads a sequence number and a timestamp from millions of frames a second, and a
//! full parse of each would make it the bottleneck. The scanner walks the path and skips
//! every value it does not need by matching brackets and strings; it stops at the member.
//!
//! Frames that are not well-formed JSON may give `None` or a wrong answer for the member, never
//! a panic; the load client counts frames without the member separately.

/// A parsed JSON pointer such as `/data/sched` (`""` is the whole document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    tokens: Vec<Vec<u8>>,
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
            .map(|t| t.replace("~1", "/").replace("~0", "~").into_bytes())
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
    fn locate(&self, json: &[u8]) -> Option<usize> {
        let mut at = skip_ws(json, 0);
        for token in &self.tokens {
            at = match json.get(at)? {
                b'{' => member(json, at + 1, token)?,
                b'[' => {
                    let index: usize = std::str::from_utf8(token).ok()?.parse().ok()?;
                    element(json, at + 1, index)?
                }
                _ => return None,
            };
        }
        Some(at)
    }

    /// The value at this pointer as an unsigned integer (a JSON number without fraction, or a
    /// string of digits).
    pub fn u64_in(&self, json: &[u8]) -> Option<u64> {
        let at = self.locate(json)?;
        let (digits_at, quoted) = match json.get(at)? {
            b'"' => (at + 1, true),
            _ => (at, false),
        };
        let mut i = digits_at;
        while json.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let v = parse_digits(&json[digits_at..i])?;
        // The number must end there: a fraction or exponent is not an integer.
        match (json.get(i), quoted) {
            (Some(b'"'), true) => Some(v),
            (None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'), false) => Some(v),
            _ => None,
        }
    }

    /// The value at this pointer as a number (integer or float).
    pub fn f64_in(&self, json: &[u8]) -> Option<f64> {
        let raw = self.find(json)?;
        if let Some(v) = self.u64_in(json) {
            return Some(v as f64);
        }
        let v: f64 = std::str::from_utf8(raw).ok()?.parse().ok()?;
        v.is_finite().then_some(v)
    }
}

/// The value of a run of ASCII digits, eight at a time (SWAR); `None` if empty or over u64.
fn parse_digits(d: &[u8]) -> Option<u64> {
    if d.is_empty() || d.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    let mut chunks = d.chunks_exact(8);
    for c in &mut chunks {
        let eight = eight_digits(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        v = v.checked_mul(100_000_000)?.checked_add(eight)?;
    }
    for &b in chunks.remainder() {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
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

/// Inside an object (just after `{`): the start of the value whose key is `key`.
fn member(b: &[u8], mut i: usize, key: &[u8]) -> Option<usize> {
    loop {
        // Whitespace and the comma before a key.
        loop {
            match *b.get(i)? {
                b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
                b'"' => break,
                _ => return None, // `}`: not here (or not JSON)
            }
        }
        let end = skip_string(b, i)?;
        let raw = &b[i + 1..end - 1];
        // An escaped key can still spell `key` (`"s\u0065q"`).
        // Keys are a few bytes: compare them in place rather than call `memcmp`.
        let same = raw.len() == key.len() && raw.iter().zip(key).all(|(x, y)| x == y);
        let matches = same
            || (raw.contains(&b'\\')
                && serde_json::from_slice::<String>(&b[i..end])
                    .ok()?
                    .as_bytes()
                    == key);
        i = end;
        loop {
            match *b.get(i)? {
                b':' => break,
                b' ' | b'\t' | b'\n' | b'\r' => i += 1,
                _ => return None,
            }
        }
        i = skip_ws(b, i + 1);
        if matches {
            return Some(i);
        }
        i = skip_value(b, i)?;
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

/// The index just past the string starting at `i` (on its opening quote). Keys and short
/// values are scanned byte by byte (cheaper than setting up a vector search); longer strings
/// with memchr.
#[inline]
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    let short_end = (j + 24).min(b.len());
    while j < short_end {
        match b[j] {
            b'"' => return Some(j + 1),
            b'\\' => return skip_string_long(b, j),
            _ => j += 1,
        }
    }
    skip_string_long(b, j)
}

/// The rest of `skip_string`, from `j` inside the string.
fn skip_string_long(b: &[u8], mut j: usize) -> Option<usize> {
    loop {
        let k = memchr::memchr2(b'"', b'\\', b.get(j..)?)? + j;
        if b[k] == b'"' {
            return Some(k + 1);
        }
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
        _ => {
            let rest = &b[i..];
            let len = rest
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            (len > 0).then_some(i + len)
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
            "[a-z\"\\\\{}\\[\\] ]{0,8}".prop_map(serde_json::Value::String),
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z/~\"]{1,4}", inner, 0..4)
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
}
