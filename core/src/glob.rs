//! Redis's glob matching for KEYS / SCAN MATCH: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`
//! and `\` escapes, on bytes.
//!
//! Iterative with one backtrack point for the last `*`, so matching is O(n·m) at
//! worst and never recurses (Redis's recursive matcher needed a depth guard).

/// True if `text` matches `pattern`.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((star_p, star_t)) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against the class starting at `pattern[start] == b'['`.
/// Returns (matched, index after the class). An unterminated class runs to the end,
/// as in Redis.
fn class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) =
                if pattern[i] <= pattern[i + 2] { (pattern[i], pattern[i + 2]) } else { (pattern[i + 2], pattern[i]) };
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    let next = (i + 1).min(pattern.len());
    Some((matched != negate, next))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_glob_cases() {
        assert!(matches(b"*", b""));
        assert!(matches(b"*", b"anything"));
        assert!(matches(b"h?llo", b"hello"));
        assert!(!matches(b"h?llo", b"hllo"));
        assert!(matches(b"h*llo", b"heeeello"));
        assert!(matches(b"h[ae]llo", b"hallo"));
        assert!(!matches(b"h[ae]llo", b"hillo"));
        assert!(matches(b"h[^e]llo", b"hallo"));
        assert!(!matches(b"h[^e]llo", b"hello"));
        assert!(matches(b"h[a-b]llo", b"hbllo"));
        assert!(matches(b"h[b-a]llo", b"hallo"));
        assert!(matches(b"lock:\\*", b"lock:*"));
        assert!(!matches(b"lock:\\*", b"lock:x"));
        assert!(matches(b"lock:*:owner", b"lock:a:b:owner"));
        assert!(!matches(b"lock:*:owner", b"lock:a:b:owners"));
        assert!(matches(b"a*b*c", b"aXXbYYc"));
        assert!(!matches(b"a*b*c", b"aXXbYY"));
        assert!(!matches(b"abc", b"abcd"));
    }

    #[test]
    fn pathological_pattern_is_not_exponential() {
        let text = vec![b'a'; 10_000];
        let pattern = b"*a*a*a*a*a*a*a*a*a*b";
        assert!(!matches(pattern, &text));
    }
}
