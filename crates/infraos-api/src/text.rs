//! Bounded text: strings that come from outside (names, paths, reasons quoting input) are cut
//! before they enter an error message, an audit record or a log line, so a request cannot turn
//! a refusal into a disk-filling or bandwidth-amplifying primitive (issue 16).

use std::borrow::Cow;

/// Most bytes of one outside string quoted in an audit record (subject, object name, reason).
pub const AUDIT_STRING_MAX: usize = 256;
/// Most bytes of one outside string quoted in an error message sent back to the caller.
pub const ERROR_STRING_MAX: usize = 256;
/// Most bytes of a whole error message (its reason), after every quoted part was bounded.
pub const REASON_MAX: usize = 4096;

/// `s` unchanged when it fits in `max` bytes; otherwise its longest prefix that ends on a
/// character boundary within `max`, followed by `…(N bytes)` with the full length, so a
/// reader sees that it was cut and by how much.
pub fn bounded(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…({} bytes)", &s[..end], s.len()))
}

/// Cuts an owned string in place (see [`bounded`]); no copy when it fits.
pub fn bound_owned(s: String, max: usize) -> String {
    match bounded(&s, max) {
        Cow::Borrowed(_) => s,
        Cow::Owned(cut) => cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_borrowed_unchanged() {
        assert!(matches!(bounded("node-1", 8), Cow::Borrowed("node-1")));
        assert_eq!(bound_owned("abc".into(), 3), "abc");
    }

    #[test]
    fn long_strings_are_cut_on_a_char_boundary_and_say_their_length() {
        let long = "a".repeat(2_500_000);
        let cut = bounded(&long, AUDIT_STRING_MAX);
        assert!(cut.len() < AUDIT_STRING_MAX + 32, "{}", cut.len());
        assert!(cut.ends_with("…(2500000 bytes)"), "{cut}");
        // 'é' is two bytes: a cut at an odd byte must not split it.
        let accents = "é".repeat(10);
        let cut = bounded(&accents, 5);
        assert_eq!(cut, "éé…(20 bytes)");
    }
}
