//! The file directory: a YAML list of twins, reloaded when the file changes.
//!
//! ```yaml
//! twins:
//!   - id: 10
//!     account: 5F4cPrFhdgZzWz6gACetD1nHL3xnzNzVChpB5bKkRWgAG4Jv   # SS58 or 0x hex
//!     relays: [relay.example.com]                                # or "a.example_b.example"
//!     pk: 0x03bd37aee874dd317b1c6a2fde9994f816c158c0dcd9650dfacd3f433b5300cde0  # optional
//! ```
//!
//! An invalid file is refused with its line and the reason, and the last good version stays
//! in force, so a typo in production never logs every twin out.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::{DirectoryError, TwinChange, TwinDirectory};
use crate::keys::parse_account_key;
use crate::twin::{split_relays, Twin};

/// Why a twins file was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("twins file {path}{}: {reason}", location(*.line, *.column))]
pub struct TwinsFileError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line of the offending entry, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" line {l} column {c}"),
        (Some(l), None) => format!(" line {l}"),
        _ => String::new(),
    }
}

/// A directory served from a YAML twins file.
pub struct FileDirectory {
    path: PathBuf,
    snapshot: RwLock<Arc<Snapshot>>,
    last_seen: Mutex<Option<FileStamp>>,
    last_error: Mutex<Option<TwinsFileError>>,
    changes: broadcast::Sender<TwinChange>,
}

#[derive(Default)]
struct Snapshot {
    by_id: HashMap<u32, Arc<Twin>>,
    by_account: HashMap<[u8; 32], u32>,
}

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl FileDirectory {
    /// Loads the file; fails if it is missing or invalid (there is no last good version yet).
    pub fn open(path: impl Into<PathBuf>) -> Result<Arc<FileDirectory>, TwinsFileError> {
        let path = path.into();
        let stamp = stamp(&path);
        let twins = load(&path)?;
        let (changes, _) = broadcast::channel(64);
        Ok(Arc::new(FileDirectory {
            snapshot: RwLock::new(Arc::new(Snapshot::from_twins(twins))),
            path,
            last_seen: Mutex::new(stamp),
            last_error: Mutex::new(None),
            changes,
        }))
    }

    /// Parses `text` as a twins file (for tools that validate without serving).
    pub fn parse(path: &Path, text: &str) -> Result<Vec<Twin>, TwinsFileError> {
        parse(path, text)
    }

    /// The file being served.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many twins are loaded.
    pub fn len(&self) -> usize {
        self.current().by_id.len()
    }

    /// Whether no twin is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The error of the last reload attempt, if it failed (the previous version is served).
    pub fn last_error(&self) -> Option<TwinsFileError> {
        self.last_error.lock().clone()
    }

    /// Re-reads the file if it changed. Returns whether a new version was loaded; on error the
    /// previous version stays in force and the error is remembered.
    pub fn reload_if_changed(&self) -> Result<bool, TwinsFileError> {
        let current = stamp(&self.path);
        if current.is_some() && current == *self.last_seen.lock() {
            return Ok(false);
        }
        *self.last_seen.lock() = current;
        match load(&self.path) {
            Ok(twins) => {
                let fresh = Arc::new(Snapshot::from_twins(twins));
                let old = std::mem::replace(&mut *self.snapshot.write(), fresh.clone());
                *self.last_error.lock() = None;
                for id in changed_ids(&old, &fresh) {
                    let _ = self.changes.send(Some(id));
                }
                tracing::info!(path = %self.path.display(), twins = fresh.by_id.len(), "twins file reloaded");
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "twins file refused; keeping the previous version");
                *self.last_error.lock() = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Polls the file every `interval` and reloads it on change, until the directory is
    /// dropped. Polling (rather than inotify) also sees Kubernetes ConfigMap symlink swaps.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(dir) = weak.upgrade() else { break };
                let _ = dir.reload_if_changed();
            }
        })
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().clone()
    }
}

impl fmt::Debug for FileDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDirectory")
            .field("path", &self.path)
            .field("twins", &self.len())
            .finish()
    }
}

#[async_trait]
impl TwinDirectory for FileDirectory {
    async fn twin(&self, id: u32) -> Result<Option<Arc<Twin>>, DirectoryError> {
        Ok(self.current().by_id.get(&id).cloned())
    }

    async fn twin_id_by_account(&self, account: &[u8; 32]) -> Result<Option<u32>, DirectoryError> {
        Ok(self.current().by_account.get(account).copied())
    }

    fn changes(&self) -> Option<broadcast::Receiver<TwinChange>> {
        Some(self.changes.subscribe())
    }
}

impl Snapshot {
    fn from_twins(twins: Vec<Twin>) -> Snapshot {
        let mut snap = Snapshot::default();
        for twin in twins {
            snap.by_account.insert(twin.account, twin.id);
            snap.by_id.insert(twin.id, Arc::new(twin));
        }
        snap
    }
}

fn changed_ids(old: &Snapshot, new: &Snapshot) -> Vec<u32> {
    let removed = old.by_id.keys().filter(|id| !new.by_id.contains_key(id));
    let added_or_changed = new
        .by_id
        .iter()
        .filter(|(id, twin)| old.by_id.get(id) != Some(twin))
        .map(|(id, _)| id);
    removed.chain(added_or_changed).copied().collect()
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

fn load(path: &Path) -> Result<Vec<Twin>, TwinsFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| TwinsFileError {
        path: path.to_path_buf(),
        line: None,
        column: None,
        reason: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Vec<Twin>, TwinsFileError> {
    let file: RawFile = serde_yaml_ng::from_str(text).map_err(|e| {
        let loc = e.location();
        TwinsFileError {
            path: path.to_path_buf(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            reason: strip_location(&e.to_string()),
        }
    })?;
    check_unique(path, text, file.twins)
}

/// serde_yaml appends " at line L column C"; we report the location in our own fields.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    twins: Vec<RawTwin>,
}

/// One entry. Each field validates itself while it is parsed, so a bad value is reported at
/// its own line by the YAML parser.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTwin {
    #[serde(deserialize_with = "de_id")]
    id: u32,
    #[serde(deserialize_with = "de_account")]
    account: [u8; 32],
    #[serde(default, deserialize_with = "de_relays")]
    relays: Vec<String>,
    #[serde(default, deserialize_with = "de_pk")]
    pk: Option<Vec<u8>>,
}

fn de_id<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(de::Error::custom("twin id 0 is reserved")),
        id => Ok(id),
    }
}

fn de_account<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let text = String::deserialize(d)?;
    parse_account_key(&text).map_err(|e| de::Error::custom(format!("account: {e}")))
}

fn de_relays<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Relays {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Relays::deserialize(d)? {
        Relays::List(list) => list.iter().flat_map(|r| split_relays(r)).collect(),
        Relays::Joined(joined) => split_relays(&joined),
    })
}

fn de_pk<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    parse_pk(&text)
        .map(Some)
        .map_err(|e| de::Error::custom(format!("pk: {e}")))
}

/// Refuses duplicate ids and accounts; the error names the line of the later entry.
fn check_unique(path: &Path, text: &str, raw: Vec<RawTwin>) -> Result<Vec<Twin>, TwinsFileError> {
    let mut ids = HashMap::new();
    let mut accounts = HashMap::new();
    let mut twins = Vec::with_capacity(raw.len());
    for (index, entry) in raw.into_iter().enumerate() {
        let reason = if ids.insert(entry.id, ()).is_some() {
            Some(format!("duplicate twin id {}", entry.id))
        } else {
            accounts
                .insert(entry.account, entry.id)
                .map(|other| format!("twin {} has the same account as twin {other}", entry.id))
        };
        if let Some(reason) = reason {
            return Err(TwinsFileError {
                path: path.to_path_buf(),
                line: entry_line(text, index),
                column: None,
                reason,
            });
        }
        twins.push(Twin {
            id: entry.id,
            account: entry.account,
            relays: entry.relays,
            pk: entry.pk,
        });
    }
    Ok(twins)
}

/// The 1-based line where the `index`-th block-style list entry starts, if the file uses
/// block style (flow-style lists get no line).
fn entry_line(text: &str, index: usize) -> Option<usize> {
    let items: Vec<(usize, usize)> = text
        .lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let indent = line.len() - line.trim_start().len();
            line.trim_start()
                .starts_with("- ")
                .then_some((n + 1, indent))
        })
        .collect();
    let top = items.iter().map(|&(_, indent)| indent).min()?;
    items
        .iter()
        .filter(|&&(_, indent)| indent == top)
        .nth(index)
        .map(|&(n, _)| n)
}

fn parse_pk(text: &str) -> Result<Vec<u8>, String> {
    let bytes =
        hex::decode(text.trim().trim_start_matches("0x")).map_err(|e| format!("not hex ({e})"))?;
    if bytes.len() != 33 {
        return Err(format!(
            "expected a 33-byte compressed secp256k1 key, got {} bytes",
            bytes.len()
        ));
    }
    k256::PublicKey::from_sec1_bytes(&bytes).map_err(|_| "not a point on secp256k1".to_string())?;
    Ok(bytes)
}
