//! Object name rules (DNS-1123), shared by every kind.

/// A DNS-1123 label: at most 63 lowercase alphanumerics or '-', starting and ending
/// alphanumeric. Project (namespace) names and node names follow it.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters. Object names follow it.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The reason a name is invalid, or `None` when it is fine.
pub fn object_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 253 {
        Some("must be at most 253 characters")
    } else if !is_dns_subdomain(name) {
        Some("must be lowercase alphanumerics, '-' or '.', starting and ending alphanumeric")
    } else {
        None
    }
}

/// The reason a project (namespace) name is invalid, or `None`.
pub fn project_name_problem(name: &str) -> Option<&'static str> {
    if is_dns_label(name) {
        None
    } else {
        Some("must be at most 63 lowercase alphanumerics or '-', starting and ending alphanumeric")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns_label("node-1"));
        assert!(!is_dns_label("Node-1"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("gpu.node-1"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(object_name_problem("").is_some());
        assert!(project_name_problem("ml.team").is_some());
    }
}
