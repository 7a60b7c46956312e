//! JSON helpers that depend on nothing else in the crate.

/// Whether arrays and objects in the JSON text `body` nest deeper than `max` (strings and
/// their escapes skipped; the text need not be valid JSON: the parser judges that).
pub(crate) fn too_deep(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert!(!too_deep(b"[[]]", 2));
        assert!(too_deep(b"[[[]]]", 2));
        assert!(!too_deep(br#"["[[[[", {"a":"\"[[["}]"#, 2));
        assert!(too_deep(br#"{"a":{"b":[1]}}"#, 2));
        // Unbalanced or invalid text is no error here: the parser judges it.
        assert!(!too_deep(b"]]]][", 1));
    }
}
