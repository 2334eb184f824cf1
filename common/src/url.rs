//! URLs as they may be shown: in logs, `--check-config` output and metric labels, never with
//! a password.
//!
//! The user information of `scheme://user:password@host/…` ends at the **last** `@` before
//! the query: a password with an unescaped `@` (which URL parsers accept) must not leave its
//! tail in the host part. A `/` in a password counts as part of it too, so a path holding an
//! `@` is hidden rather than a password shown.

/// `scheme://user:secret@host…` → `scheme://user:***@host…`; anything without a password
/// is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some(parts) = Parts::of(url) else {
        return url.to_string();
    };
    let Some(userinfo) = parts.userinfo else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{}://{user}:***@{}", parts.scheme, parts.rest),
        None => url.to_string(),
    }
}

/// `scheme://user:secret@host…` → `scheme://host…`: the URL with no user information at all.
pub fn without_userinfo(url: &str) -> String {
    match Parts::of(url) {
        Some(Parts {
            scheme,
            userinfo: Some(_),
            rest,
        }) => format!("{scheme}://{rest}"),
        _ => url.to_string(),
    }
}

struct Parts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    /// Host, port, path, query: everything after the user information.
    rest: &'a str,
}

impl<'a> Parts<'a> {
    fn of(url: &'a str) -> Option<Parts<'a>> {
        let (scheme, after) = url.split_once("://")?;
        let before_query = after.find(['?', '#']).unwrap_or(after.len());
        Some(match after[..before_query].rfind('@') {
            Some(at) => Parts {
                scheme,
                userinfo: Some(&after[..at]),
                rest: &after[at + 1..],
            },
            None => Parts {
                scheme,
                userinfo: None,
                rest: after,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_masked_and_the_user_kept() {
        assert_eq!(
            redact_url("redis://app:s3cret@redis.internal:6379/0"),
            "redis://app:***@redis.internal:6379/0"
        );
        assert_eq!(
            redact_url("rediss://:s3cret@redis.internal"),
            "rediss://:***@redis.internal"
        );
    }

    #[test]
    fn a_password_holding_at_signs_does_not_leak() {
        let shown = redact_url("redis://app:p@ss@w0rd@redis.internal:6379");
        assert_eq!(shown, "redis://app:***@redis.internal:6379");
        assert!(!shown.contains("ss@"), "{shown}");
        assert!(!shown.contains("w0rd"), "{shown}");
    }

    #[test]
    fn a_password_holding_a_slash_does_not_leak() {
        let shown = redact_url("redis://app:pa/ss@host:6379");
        assert_eq!(shown, "redis://app:***@host:6379");
    }

    #[test]
    fn an_at_sign_in_the_query_is_not_user_information() {
        assert_eq!(
            redact_url("redis-cluster://u:pw@a:7000?node=b:7001&x=@y"),
            "redis-cluster://u:***@a:7000?node=b:7001&x=@y"
        );
        assert_eq!(
            redact_url("redis://a:6379?x=u:p@y"),
            "redis://a:6379?x=u:p@y"
        );
    }

    #[test]
    fn urls_without_a_password_are_unchanged() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://user@host",
            "unix:///run/redis.sock",
            "not a url",
            "",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn user_information_can_be_dropped_whole() {
        assert_eq!(
            without_userinfo("wss://user:p@ss@relay.example:443/x"),
            "wss://relay.example:443/x"
        );
        assert_eq!(without_userinfo("ws://127.0.0.1:1"), "ws://127.0.0.1:1");
    }
}
