//! The federation store in Redis, shared by every pod of a relay.
//!
//! Keys (each queue's keys share the hash tag `{d:<domain>}`, so its script runs in one
//! Redis Cluster slot):
//!
//! | key | type | contents |
//! |---|---|---|
//! | `rmb:fed:domains` | set | remote domains that may have queued envelopes |
//! | `rmb:fed:{d:<domain>}:items` | hash | item id → queued envelope (JSON) |
//! | `rmb:fed:{d:<domain>}:due` | sorted set | item id → unix ms when it may be sent next |
//! | `rmb:fed:health` | hash | domain → `<consecutive failures>:<down until unix ms>` |
//! | `rmb:fed:seen:<key>` | string | replay mark, expires with the window it guards |
//! | `rmb:fed:identity` | string | the cluster's relay identity key (key file JSON, secret included) when no `--identity-key` is given |

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::SetOptions;
use rmb_common::redis::ClientSettings;

use super::{down_for_ms, FederationStore, Health, Outbound, StoreError};

const DOMAINS: &str = "rmb:fed:domains";
const HEALTH: &str = "rmb:fed:health";
const IDENTITY: &str = "rmb:fed:identity";

fn items_key(domain: &str) -> String {
    format!("rmb:fed:{{d:{domain}}}:items")
}

fn due_key(domain: &str) -> String {
    format!("rmb:fed:{{d:{domain}}}:due")
}

/// KEYS: items, due. ARGV: id, blob, due ms.
const PUSH: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"#;

/// KEYS: items, due. ARGV: now ms, max, lease-until ms. Returns id, blob, id, blob, …
const CLAIM: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local blob = redis.call('HGET', KEYS[1], id)
  if blob then
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    table.insert(out, id)
    table.insert(out, blob)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
"#;

/// KEYS: items, due. ARGV: ids.
const REMOVE: &str = r#"
for _, id in ipairs(ARGV) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return 1
"#;

/// KEYS: health. ARGV: domain, ok ("1"/"0"), now ms.
const REPORT: &str = r#"
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local fails = 0
if cur then fails = tonumber(string.match(cur, '^(%d+):')) or 0 end
fails = fails + 1
local shift = math.min(fails, 7)
local down = math.min(500 * (2 ^ shift), 60000)
redis.call('HSET', KEYS[1], ARGV[1], fails .. ':' .. string.format('%d', tonumber(ARGV[3]) + down))
return fails
"#;

/// The Redis-backed store.
pub struct RedisStore {
    client: Client,
    push: Script,
    claim: Script,
    remove: Script,
    report: Script,
}

impl RedisStore {
    /// Connects to `url` (same forms as the relay's `--redis`); retries in the background
    /// if Redis is not reachable yet.
    pub async fn connect(url: &str, command_timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = rmb_common::redis::client(url, &ClientSettings::shared(command_timeout))
            .map_err(|e| StoreError(e.to_string()))?;
        client.connect();
        if tokio::time::timeout(Duration::from_secs(5), client.wait_for_connect())
            .await
            .is_err()
        {
            tracing::warn!("federation store: redis not reachable yet; retrying in the background");
        }
        Ok(RedisStore {
            client,
            push: Script::from_lua(PUSH),
            claim: Script::from_lua(CLAIM),
            remove: Script::from_lua(REMOVE),
            report: Script::from_lua(REPORT),
        })
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = self.client.quit().await;
    }
}

fn err(op: &str) -> impl Fn(Error) -> StoreError + '_ {
    move |e| StoreError(format!("redis {op}: {e}"))
}

#[async_trait]
impl FederationStore for RedisStore {
    async fn push(
        &self,
        domain: &str,
        id: &str,
        item: &Outbound,
        due_ms: u64,
    ) -> Result<(), StoreError> {
        let args: Vec<Value> = vec![id.into(), item.encode().into(), (due_ms as i64).into()];
        let _: Value = self
            .push
            .evalsha_with_reload(&self.client, vec![items_key(domain), due_key(domain)], args)
            .await
            .map_err(err("push"))?;
        let _: i64 = self
            .client
            .sadd(DOMAINS, domain)
            .await
            .map_err(err("sadd"))?;
        Ok(())
    }

    async fn claim(
        &self,
        domain: &str,
        now_ms: u64,
        max: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<(String, Outbound)>, StoreError> {
        let args: Vec<Value> = vec![
            (now_ms as i64).into(),
            (max as i64).into(),
            (lease_until_ms as i64).into(),
        ];
        let reply: Vec<Value> = self
            .claim
            .evalsha_with_reload(&self.client, vec![items_key(domain), due_key(domain)], args)
            .await
            .map_err(err("claim"))?;
        let mut out = Vec::with_capacity(reply.len() / 2);
        let mut broken = Vec::new();
        for pair in reply.chunks(2) {
            let [id, blob] = pair else { continue };
            let Some(id) = id.as_string() else { continue };
            let decoded = blob.as_bytes().and_then(Outbound::decode);
            match decoded {
                Some(item) => out.push((id, item)),
                None => broken.push(id),
            }
        }
        if !broken.is_empty() {
            tracing::warn!(%domain, count = broken.len(), "dropping unreadable federation queue entries");
            self.remove(domain, &broken).await?;
        }
        Ok(out)
    }

    async fn remove(&self, domain: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let args: Vec<Value> = ids.iter().map(|id| id.as_str().into()).collect();
        let _: Value = self
            .remove
            .evalsha_with_reload(&self.client, vec![items_key(domain), due_key(domain)], args)
            .await
            .map_err(err("remove"))?;
        Ok(())
    }

    async fn domains(&self) -> Result<Vec<String>, StoreError> {
        self.client.smembers(DOMAINS).await.map_err(err("smembers"))
    }

    async fn retire_if_empty(&self, domain: &str) -> Result<(), StoreError> {
        // Remove, then look again: a push between the two puts the domain back itself, and
        // one before the removal is seen by the second look.
        let _: i64 = self
            .client
            .srem(DOMAINS, domain)
            .await
            .map_err(err("srem"))?;
        if self.depth(domain).await? > 0 {
            let _: i64 = self
                .client
                .sadd(DOMAINS, domain)
                .await
                .map_err(err("sadd"))?;
        }
        Ok(())
    }

    async fn depth(&self, domain: &str) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .hlen(items_key(domain))
            .await
            .map_err(err("hlen"))?;
        Ok(n.max(0) as u64)
    }

    async fn health(&self, domains: &[String]) -> Result<Vec<Health>, StoreError> {
        if domains.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = self
            .client
            .hmget(HEALTH, domains.to_vec())
            .await
            .map_err(err("hmget"))?;
        Ok(values
            .into_iter()
            .map(|v| {
                v.and_then(|text| {
                    let (f, d) = text.split_once(':')?;
                    Some(Health {
                        failures: f.parse().ok()?,
                        down_until_ms: d.parse().ok()?,
                    })
                })
                .unwrap_or_default()
            })
            .collect())
    }

    async fn report(&self, domain: &str, ok: bool, now_ms: u64) -> Result<(), StoreError> {
        debug_assert_eq!(down_for_ms(1), 1000);
        let args: Vec<Value> = vec![
            domain.into(),
            if ok { "1" } else { "0" }.into(),
            (now_ms as i64).into(),
        ];
        let _: Value = self
            .report
            .evalsha_with_reload(&self.client, vec![HEALTH.to_string()], args)
            .await
            .map_err(err("report"))?;
        Ok(())
    }

    async fn first_seen(&self, key: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let reply: Value = self
            .client
            .set(
                format!("rmb:fed:seen:{key}"),
                "1",
                Some(Expiration::PX(ttl_ms.max(1) as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(err("set_nx"))?;
        Ok(!reply.is_null())
    }

    async fn seen(&self, key: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .client
            .exists(format!("rmb:fed:seen:{key}"))
            .await
            .map_err(err("exists"))?;
        Ok(n > 0)
    }

    async fn unsee(&self, key: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .client
            .del(format!("rmb:fed:seen:{key}"))
            .await
            .map_err(err("del"))?;
        Ok(())
    }

    async fn shared_identity(&self, candidate: &str) -> Result<String, StoreError> {
        let _: Value = self
            .client
            .set(IDENTITY, candidate, None, Some(SetOptions::NX), false)
            .await
            .map_err(err("set_identity"))?;
        let stored: Option<String> = self
            .client
            .get(IDENTITY)
            .await
            .map_err(err("get_identity"))?;
        stored.ok_or_else(|| StoreError("identity key vanished from redis".into()))
    }
}
