//! Local Redis URLs, as the original `rmb-peer` accepts them: `redis://` and `rediss://`
//! (TCP, TLS) and Unix sockets as `redis+unix:///path` or `unix:///path`. Used by the gateway
//! and by [`crate::local_client::LocalClient`], so both take the same URLs.
//!
//! Unix socket URLs take the database and credentials as query parameters (`?db=2&pass=…`,
//! `user=`/`username=`, `pass=`/`password=`) or, for `redis+unix://`, as
//! `user:password@host` (the host itself is ignored).

use std::path::PathBuf;

use fred::prelude::{Config, ServerConfig};

/// Why a Redis URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    /// Not a scheme we speak.
    #[error("unsupported redis url scheme {0:?}: expected redis://, rediss://, redis+unix:// or unix://")]
    Scheme(String),
    /// A Unix socket URL without a path.
    #[error("a unix socket url needs an absolute path, like unix:///run/redis/redis.sock")]
    NoPath,
    /// A `db` parameter that is not a database number.
    #[error("db={0:?} is not a database number (0-255)")]
    Database(String),
    /// What fred refuses in a TCP URL.
    #[error("{0}")]
    Tcp(String),
}

/// The client configuration for `url`.
pub fn config(url: &str) -> Result<Config, RedisUrlError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| RedisUrlError::Scheme(url.to_string()))?;
    match scheme.to_ascii_lowercase().as_str() {
        "redis" | "rediss" => Config::from_url(url).map_err(|e| RedisUrlError::Tcp(e.to_string())),
        "redis+unix" | "unix" => unix_config(rest),
        other => Err(RedisUrlError::Scheme(other.to_string())),
    }
}

/// A Unix socket configuration from what follows `scheme://`.
fn unix_config(rest: &str) -> Result<Config, RedisUrlError> {
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    // `user:pass@host/path` or `/path` (the authority of `unix:///path` is empty).
    let (authority, path) = match location.find('/') {
        Some(i) => location.split_at(i),
        None => return Err(RedisUrlError::NoPath),
    };
    if path.len() < 2 {
        return Err(RedisUrlError::NoPath);
    }
    let (mut username, mut password) = match authority.rsplit_once('@') {
        Some((credentials, _host)) => match credentials.split_once(':') {
            Some((user, pass)) => (non_empty(user), non_empty(pass)),
            None => (non_empty(credentials), None),
        },
        None => (None, None),
    };
    let mut database = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "db" => {
                let db = percent_decode(value);
                database = Some(db.parse::<u8>().map_err(|_| RedisUrlError::Database(db))?);
            }
            "user" | "username" => username = non_empty(value),
            "pass" | "password" => password = non_empty(value),
            _ => {}
        }
    }
    Ok(Config {
        server: ServerConfig::Unix {
            path: PathBuf::from(percent_decode(path)),
        },
        username,
        password,
        database,
        ..Config::default()
    })
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| percent_decode(text))
}

/// `%XX` escapes decoded (a malformed escape is kept as it is).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Redis URL for logs: the password replaced by `***`, in the user part and in a
/// `pass=`/`password=` query parameter.
pub fn masked(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    let location = match location.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{user}:***@{host}")
        }
        None => location.to_string(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("pass" | "password", _)) => {
                    format!("{}=***", pair.split('=').next().unwrap_or_default())
                }
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{location}?{q}"),
        None => format!("{scheme}://{location}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_path(config: &Config) -> PathBuf {
        match &config.server {
            ServerConfig::Unix { path } => path.clone(),
            other => panic!("not a unix socket: {other:?}"),
        }
    }

    #[test]
    fn unix_socket_urls_in_both_spellings() {
        for url in ["redis+unix:///run/redis/r.sock", "unix:///run/redis/r.sock"] {
            let c = config(url).unwrap();
            assert_eq!(unix_path(&c), PathBuf::from("/run/redis/r.sock"), "{url}");
            assert_eq!((c.username, c.password, c.database), (None, None, None));
        }
    }

    #[test]
    fn unix_socket_database_and_credentials() {
        let c = config("unix:///tmp/r%20s.sock?db=3&user=app&pass=s%40cret").unwrap();
        assert_eq!(unix_path(&c), PathBuf::from("/tmp/r s.sock"));
        assert_eq!(c.database, Some(3));
        assert_eq!(c.username.as_deref(), Some("app"));
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        let c = config("redis+unix://app:pw@localhost/tmp/r.sock").unwrap();
        assert_eq!(unix_path(&c), PathBuf::from("/tmp/r.sock"));
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("app"), Some("pw"))
        );
    }

    #[test]
    fn bad_urls_say_why() {
        assert!(matches!(
            config("tcp://127.0.0.1:6379"),
            Err(RedisUrlError::Scheme(_))
        ));
        assert!(matches!(
            config("localhost:6379"),
            Err(RedisUrlError::Scheme(_))
        ));
        assert!(matches!(config("unix://"), Err(RedisUrlError::NoPath)));
        assert!(matches!(
            config("unix:///tmp/r.sock?db=x"),
            Err(RedisUrlError::Database(_))
        ));
        assert!(config("redis://127.0.0.1:6379/2").is_ok());
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            masked("redis://app:s3cret@127.0.0.1:6379/0"),
            "redis://app:***@127.0.0.1:6379/0"
        );
        assert_eq!(masked("redis://127.0.0.1"), "redis://127.0.0.1");
        assert_eq!(
            masked("unix:///tmp/r.sock?db=1&pass=s3cret"),
            "unix:///tmp/r.sock?db=1&pass=***"
        );
        assert_eq!(
            masked("redis+unix://u:s3cret@x/tmp/r.sock?password=p"),
            "redis+unix://u:***@x/tmp/r.sock?password=***"
        );
    }
}
