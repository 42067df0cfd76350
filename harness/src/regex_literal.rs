//! Escaping text for use as a literal inside an RE2 regex (Envoy's safe_regex, stats filters).

/// `a.b*c` -> `a\\.b\\*c`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_metacharacters() {
        assert_eq!(
            super::escape("outbound|8080||a.b"),
            "outbound\\|8080\\|\\|a\\.b"
        );
    }
}
