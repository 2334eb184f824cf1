//! CPU (and Redis commands) spent per envelope by what serves a run: relays read from their own
//! `/metrics` (`process_cpu_seconds_total`) or from `/proc/<pid>/stat`, Redis from `INFO cpu`
//! and `INFO commandstats` of every node (a cluster's nodes found with `CLUSTER NODES`).
//!
//! Both relay sources count whole clock ticks of `/proc` (the Prometheus process collector reads
//! the same `utime + stime`): 10 ms resolution, so a reading is off by at most two ticks. Redis
//! reports microseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The resolution of `/proc` CPU times (USER_HZ is 100 on every Linux platform).
pub const TICK_SECONDS: f64 = 0.01;

/// How long one metrics or Redis read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a source cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// Not reachable, or no answer in time.
    #[error("{0}: {1}")]
    Io(String, String),
    /// An answer without what was asked for.
    #[error("{0}: {1}")]
    Reply(String, String),
    /// A URL this reader does not handle.
    #[error("{0}: only http://host:port/path URLs are read")]
    Url(String),
}

/// What to read CPU time from.
#[derive(Debug, Clone, Default)]
pub struct CpuSources {
    /// Relays' metrics URLs (`http://host:port/metrics`).
    pub relay_metrics: Vec<String>,
    /// Relay process ids (read from `/proc`).
    pub relay_pids: Vec<u32>,
    /// Every Redis node (`host:port`), cluster nodes already expanded.
    pub redis_nodes: Vec<String>,
}

/// One reading of every source.
#[derive(Debug, Clone, Default)]
pub struct CpuReading {
    /// Relay CPU seconds so far (`None` without relay sources).
    pub relay: Option<f64>,
    /// Redis CPU seconds so far, summed over nodes (`None` without Redis nodes).
    pub redis: Option<f64>,
    /// Redis command calls so far by command name, summed over nodes.
    pub redis_calls: BTreeMap<String, u64>,
}

/// What a run cost per envelope.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PerEnvelope {
    /// Relay CPU µs per envelope.
    pub relay_us: Option<f64>,
    /// Redis CPU µs per envelope (all nodes).
    pub redis_us: Option<f64>,
    /// Redis commands per envelope by command (Lua scripts' inner commands count under their
    /// own names), those at 0.01 or more.
    pub redis_commands: BTreeMap<String, f64>,
    /// The relay reading's worst error from tick rounding, in percent of what was measured.
    pub relay_precision_percent: Option<f64>,
}

impl PerEnvelope {
    /// Relay plus Redis CPU µs per envelope.
    pub fn total_us(&self) -> Option<f64> {
        match (self.relay_us, self.redis_us) {
            (None, None) => None,
            (r, d) => Some(r.unwrap_or(0.0) + d.unwrap_or(0.0)),
        }
    }

    /// Redis commands per envelope, all commands.
    pub fn redis_commands_total(&self) -> f64 {
        self.redis_commands.values().sum()
    }

    /// `1.48: xadd 1.01, evalsha 0.10, …` (largest first), or `None` without Redis.
    pub fn redis_commands_text(&self) -> Option<String> {
        // Only runs that read Redis have commands to show.
        self.redis_us?;
        let mut by_count: Vec<(&String, &f64)> = self.redis_commands.iter().collect();
        by_count.sort_by(|a, b| b.1.total_cmp(a.1));
        let parts: Vec<String> = by_count
            .iter()
            .map(|(name, n)| format!("{name} {n:.2}"))
            .collect();
        Some(format!(
            "{:.2}: {}",
            self.redis_commands_total(),
            parts.join(", ")
        ))
    }
}

impl CpuSources {
    /// Whether anything is read at all.
    pub fn is_empty(&self) -> bool {
        self.relay_metrics.is_empty() && self.relay_pids.is_empty() && self.redis_nodes.is_empty()
    }

    /// Sources with every node of the clusters the given Redis nodes belong to.
    pub async fn discover(
        relay_metrics: Vec<String>,
        relay_pids: Vec<u32>,
        redis_nodes: &[String],
    ) -> Result<CpuSources, CpuError> {
        let mut nodes = BTreeSet::new();
        for node in redis_nodes {
            nodes.insert(node.clone());
            nodes.extend(cluster_nodes(node).await?);
        }
        Ok(CpuSources {
            relay_metrics,
            relay_pids,
            redis_nodes: nodes.into_iter().collect(),
        })
    }

    /// Reads every source; an unreadable one is an error (a partial sum would mislead).
    pub async fn read(&self) -> Result<CpuReading, CpuError> {
        let mut reading = CpuReading::default();
        let relay_sources = !self.relay_metrics.is_empty() || !self.relay_pids.is_empty();
        if relay_sources {
            let mut total = 0.0;
            for url in &self.relay_metrics {
                total += metrics_cpu_seconds(url).await?;
            }
            for pid in &self.relay_pids {
                total += process_cpu_seconds(*pid).ok_or_else(|| {
                    CpuError::Io(format!("pid {pid}"), "no /proc/<pid>/stat".into())
                })?;
            }
            reading.relay = Some(total);
        }
        if !self.redis_nodes.is_empty() {
            let mut total = 0.0;
            for node in &self.redis_nodes {
                let cpu = redis_command(node, "INFO cpu").await?;
                total += redis_cpu_seconds(&cpu)
                    .ok_or_else(|| CpuError::Reply(node.clone(), "no used_cpu_* in INFO".into()))?;
                let stats = redis_command(node, "INFO commandstats").await?;
                for (name, calls) in command_calls(&stats) {
                    *reading.redis_calls.entry(name).or_default() += calls;
                }
            }
            reading.redis = Some(total);
        }
        Ok(reading)
    }
}

impl CpuReading {
    /// What happened between `self` (before) and `after`, over `envelopes`.
    pub fn per_envelope(&self, after: &CpuReading, envelopes: f64) -> PerEnvelope {
        if envelopes <= 0.0 {
            return PerEnvelope::default();
        }
        let per = |b: Option<f64>, a: Option<f64>| Some((a? - b?) * 1e6 / envelopes);
        let relay_seconds = after.relay.zip(self.relay).map(|(a, b)| a - b);
        let mut redis_commands = BTreeMap::new();
        for (name, calls) in &after.redis_calls {
            let before = self.redis_calls.get(name).copied().unwrap_or(0);
            let n = calls.saturating_sub(before) as f64 / envelopes;
            if n >= 0.01 {
                redis_commands.insert(name.clone(), n);
            }
        }
        PerEnvelope {
            relay_us: per(self.relay, after.relay),
            redis_us: per(self.redis, after.redis),
            redis_commands,
            relay_precision_percent: relay_seconds
                .filter(|s| *s > 0.0)
                .map(|s| 2.0 * TICK_SECONDS / s * 100.0),
        }
    }
}

/// CPU seconds a process used so far (user + system), from `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the first, utime the
    // 12th and stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 * TICK_SECONDS)
}

/// `process_cpu_seconds_total` from a Prometheus text exposition.
pub fn cpu_from_metrics(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// `used_cpu_sys + used_cpu_user` from `INFO cpu`.
pub fn redis_cpu_seconds(info: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(field("used_cpu_sys:")? + field("used_cpu_user:")?)
}

/// `(command, calls)` from `INFO commandstats` (`cmdstat_xadd:calls=12,usec=…`).
pub fn command_calls(info: &str) -> Vec<(String, u64)> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// The `host:port` of every node listed in a `CLUSTER NODES` reply, except those without an
/// address (`noaddr`).
pub fn parse_cluster_nodes(reply: &str) -> Vec<String> {
    reply
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            if flags.split(',').any(|f| f == "noaddr") {
                return None;
            }
            // ip:port@cport[,hostname]
            let addr = addr.split(['@', ',']).next()?;
            (!addr.starts_with(':')).then(|| addr.to_string())
        })
        .collect()
}

/// The other nodes of `node`'s cluster (none if it is not a cluster node).
async fn cluster_nodes(node: &str) -> Result<Vec<String>, CpuError> {
    match redis_command(node, "CLUSTER NODES").await {
        Ok(reply) => Ok(parse_cluster_nodes(&reply)),
        // "ERR This instance has cluster support disabled"
        Err(CpuError::Reply(_, e)) if e.contains("cluster support disabled") => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Sends an inline command and returns its bulk-string reply.
async fn redis_command(node: &str, command: &str) -> Result<String, CpuError> {
    let io = |e: std::io::Error| CpuError::Io(node.to_string(), e.to_string());
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(node).await.map_err(io)?;
        conn.write_all(format!("{command}\r\n").as_bytes())
            .await
            .map_err(io)?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if let Some(done) = bulk_reply(&reply) {
                return done.map_err(|e| CpuError::Reply(node.to_string(), e));
            }
            let n = conn.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                return Err(CpuError::Reply(
                    node.to_string(),
                    "connection closed".into(),
                ));
            }
            reply.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(READ_TIMEOUT, exchange)
        .await
        .map_err(|_| CpuError::Io(node.to_string(), "no reply in time".into()))?
}

/// A complete RESP bulk-string (or error) reply in `buf`, or `None` if more is needed.
fn bulk_reply(buf: &[u8]) -> Option<Result<String, String>> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    match head.as_bytes().first() {
        Some(b'-') => Some(Err(head[1..].to_string())),
        Some(b'$') => {
            let Ok(len) = head[1..].parse::<usize>() else {
                return Some(Err(format!("bad reply {head:?}")));
            };
            // `len` comes from the node: a huge one must not overflow the bound.
            let body = buf.get(end + 2..(end + 2).checked_add(len)?)?;
            Some(Ok(String::from_utf8_lossy(body).into_owned()))
        }
        _ => Some(Err(format!("unexpected reply {head:?}"))),
    }
}

/// `process_cpu_seconds_total` of a relay, fetched with a plain HTTP/1.0 GET.
async fn metrics_cpu_seconds(url: &str) -> Result<f64, CpuError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| CpuError::Url(url.to_string()))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/metrics" } else { path };
    let io = |e: std::io::Error| CpuError::Io(url.to_string(), e.to_string());
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(io)?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        conn.write_all(request.as_bytes()).await.map_err(io)?;
        let mut body = Vec::new();
        conn.read_to_end(&mut body).await.map_err(io)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(READ_TIMEOUT, exchange)
        .await
        .map_err(|_| CpuError::Io(url.to_string(), "no reply in time".into()))??;
    cpu_from_metrics(&text).ok_or_else(|| {
        CpuError::Reply(
            url.to_string(),
            "no process_cpu_seconds_total (not Linux?)".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_counter_from_a_metrics_page() {
        let text = "# HELP process_cpu_seconds_total Total user and system CPU time.\n\
                    # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.34\n";
        assert_eq!(cpu_from_metrics(text), Some(12.34));
        assert_eq!(cpu_from_metrics("rmb_relay_sessions 3\n"), None);
    }

    #[test]
    fn a_bulk_length_near_the_word_size_is_incomplete_not_a_panic() {
        assert_eq!(
            bulk_reply(format!("${}\r\nabc", usize::MAX).as_bytes()),
            None
        );
    }

    #[test]
    fn lists_every_addressed_cluster_node() {
        let reply = "e1 127.0.0.1:17201@27201 myself,master - 0 0 1 connected 0-5460\n\
                     e2 127.0.0.1:17202@27202,host-b master - 0 1 2 connected 5461-10922\n\
                     e3 :0@0 master,noaddr - 0 1 3 disconnected\n";
        assert_eq!(
            parse_cluster_nodes(reply),
            vec!["127.0.0.1:17201", "127.0.0.1:17202"]
        );
    }

    #[test]
    fn parses_command_calls_and_bulk_replies() {
        let info =
            "# Commandstats\r\ncmdstat_xadd:calls=12,usec=30\r\ncmdstat_get:calls=3,usec=1\r\n";
        assert_eq!(
            command_calls(info),
            vec![("xadd".to_string(), 12), ("get".to_string(), 3)]
        );
        assert_eq!(bulk_reply(b"$5\r\nhel"), None);
        assert_eq!(bulk_reply(b"$5\r\nhello\r\n"), Some(Ok("hello".into())));
        assert_eq!(
            bulk_reply(b"-ERR This instance has cluster support disabled\r\n"),
            Some(Err("ERR This instance has cluster support disabled".into()))
        );
    }

    #[test]
    fn costs_per_envelope_are_differences_over_envelopes() {
        let before = CpuReading {
            relay: Some(1.0),
            redis: Some(2.0),
            redis_calls: [("xadd".to_string(), 100)].into(),
        };
        let after = CpuReading {
            relay: Some(3.0),
            redis: Some(3.0),
            redis_calls: [("xadd".to_string(), 1100), ("get".to_string(), 1)].into(),
        };
        let per = before.per_envelope(&after, 1000.0);
        assert_eq!(per.relay_us, Some(2000.0));
        assert_eq!(per.redis_us, Some(1000.0));
        assert_eq!(per.redis_commands.get("xadd"), Some(&1.0));
        assert_eq!(per.redis_commands.get("get"), None); // below 0.01
        assert_eq!(per.relay_precision_percent, Some(1.0));
    }
}
