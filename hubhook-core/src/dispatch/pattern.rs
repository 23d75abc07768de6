//! Globs over repository names and tags.

/// A glob over repository names or tags: `*` matches any run of characters (`/`
/// included), `?` one character; everything else matches itself.
///
/// ```
/// use hubhook_core::Pattern;
///
/// assert!(Pattern::new("acme/*").matches("acme/site"));
/// assert!(Pattern::new("v?.*").matches("v2.1"));
/// assert!(!Pattern::new("latest").matches("v2"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text.
    pub fn new(glob: impl Into<String>) -> Self {
        Self(glob.into())
    }

    /// The pattern that matches everything.
    pub fn any() -> Self {
        Self("*".to_owned())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        // Repositories and tags are ASCII by the reference grammar: match bytes, no
        // allocation. Other text falls back to characters.
        if self.0.is_ascii() && text.is_ascii() {
            glob(self.0.as_bytes(), text.as_bytes(), b'*', b'?')
        } else {
            let p: Vec<char> = self.0.chars().collect();
            let t: Vec<char> = text.chars().collect();
            glob(&p, &t, '*', '?')
        }
    }
}

/// Iterative wildcard matching with one backtrack point: linear in practice and never
/// exponential, whatever the pattern.
fn glob<T: PartialEq + Copy>(p: &[T], t: &[T], star: T, one: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == star {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = backtrack {
            pi = sp + 1;
            ti = st + 1;
            backtrack = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("*", "anything/at/all", true),
            ("*", "", true),
            ("acme/*", "acme/site", true),
            ("acme/*", "other/site", false),
            ("v*", "v1.2", true),
            ("v?", "v12", false),
            ("*-prod", "site-prod", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("latest", "latest", true),
            ("latest", "latest2", false),
            ("é*", "été", true),
            ("?t?", "été", true),
        ];
        for (glob, text, want) in cases {
            assert_eq!(Pattern::new(glob).matches(text), want, "{glob} ~ {text}");
        }
    }

    #[test]
    fn glob_matching_is_not_exponential() {
        let glob = Pattern::new("*a*a*a*a*a*a*a*a*a*a*b");
        assert!(!glob.matches(&"a".repeat(10_000)));
    }
}
