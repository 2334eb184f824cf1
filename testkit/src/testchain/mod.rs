//! `rmb-testchain`: a local stand-in for tfchain. It serves a twins file as
//! `TfgridModule` storage over Substrate's JSON-RPC (websocket), with metadata it builds
//! itself or reads from a file, and seals a finalized block with `TwinStored` /
//! `TwinUpdated` / `TwinDeleted` events whenever the file changes.
//!
//! Used in-process by tests ([`TestChain`]) and as a binary by developers.

pub mod chain;
pub mod extrinsic;
pub mod rpc;
pub mod runtime;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rmb_identity::{FileDirectory, Twin, TwinsFileError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use chain::Chain;
use rpc::Node;

/// How to run a test chain.
#[derive(Debug, Clone)]
pub struct TestChainConfig {
    /// Websocket JSON-RPC address.
    pub listen: SocketAddr,
    /// The twins file (same YAML format as the relay's file directory).
    pub twins: PathBuf,
    /// A SCALE-encoded `RuntimeMetadataPrefixed` (raw or `0x` hex) to serve instead of the
    /// built-in one, e.g. a real tfchain metadata blob.
    pub metadata: Option<PathBuf>,
    /// How often the twins file is checked for changes.
    pub poll: Duration,
    /// Also seal an empty block this often (a real chain produces one every 6 s).
    pub block_interval: Option<Duration>,
    /// `specVersion` reported to clients.
    pub spec_version: u32,
}

impl TestChainConfig {
    /// Defaults for `twins`, listening on `listen`.
    pub fn new(listen: SocketAddr, twins: impl Into<PathBuf>) -> TestChainConfig {
        TestChainConfig {
            listen,
            twins: twins.into(),
            metadata: None,
            poll: Duration::from_millis(100),
            block_interval: None,
            spec_version: 1,
        }
    }
}

/// Why a test chain cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TestChainError {
    /// The twins file is missing or invalid.
    #[error(transparent)]
    Twins(#[from] TwinsFileError),
    /// The metadata file cannot be read.
    #[error("cannot read metadata file {path}: {source}")]
    MetadataFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The metadata cannot be served.
    #[error("metadata file {path}: {source}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// Why.
        source: runtime::MetadataError,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running test chain. Dropping it stops it.
pub struct TestChain {
    addr: SocketAddr,
    node: Arc<Node>,
    life: CancellationToken,
    serving: Option<CancellationToken>,
}

impl TestChain {
    /// Loads the twins and metadata, seals genesis, starts serving and watching the file.
    pub async fn start(config: TestChainConfig) -> Result<TestChain, TestChainError> {
        let twins = read_twins(&config.twins)?;
        let (metadata, version, events) = load_metadata(config.metadata.as_deref())?;
        let node = Arc::new(Node {
            chain: Chain::new(twins, events),
            metadata,
            metadata_version: version,
            spec_version: config.spec_version,
        });
        let life = CancellationToken::new();
        tokio::spawn(watch_twins(
            node.chain.clone(),
            config.twins.clone(),
            config.poll,
            life.child_token(),
        ));
        if let Some(every) = config.block_interval {
            tokio::spawn(seal_periodically(
                node.chain.clone(),
                every,
                life.child_token(),
            ));
        }
        let mut chain = TestChain {
            addr: config.listen,
            node,
            life,
            serving: None,
        };
        chain.resume().await?;
        Ok(chain)
    }

    /// A chain serving `twins` on a free loopback port.
    pub async fn for_twins(twins: &Path) -> TestChain {
        let addr = crate::relay::free_addr();
        TestChain::start(TestChainConfig::new(addr, twins))
            .await
            .unwrap_or_else(|e| panic!("test chain: {e}"))
    }

    /// `ws://host:port`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The blocks.
    pub fn chain(&self) -> &Arc<Chain> {
        &self.node.chain
    }

    /// Stops answering: the listener closes and every connection is dropped. The chain
    /// (and the file watcher) lives on for [`TestChain::resume`].
    pub fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.cancel();
        }
    }

    /// Serves again on the same address.
    pub async fn resume(&mut self) -> Result<(), TestChainError> {
        if self.serving.is_some() {
            return Ok(());
        }
        let listener = bind_retrying(self.addr).await?;
        self.addr = listener
            .local_addr()
            .map_err(|source| TestChainError::Bind {
                addr: self.addr,
                source,
            })?;
        let serving = self.life.child_token();
        tokio::spawn(rpc::serve(listener, self.node.clone(), serving.clone()));
        self.serving = Some(serving);
        Ok(())
    }
}

impl Drop for TestChain {
    fn drop(&mut self) {
        self.life.cancel();
    }
}

/// Binds, retrying briefly: a port just released by [`TestChain::stop`] may linger.
async fn bind_retrying(addr: SocketAddr) -> Result<TcpListener, TestChainError> {
    let mut attempt = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(source) if attempt >= 50 => return Err(TestChainError::Bind { addr, source }),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn read_twins(path: &Path) -> Result<Vec<Twin>, TwinsFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| TwinsFileError {
        path: path.to_path_buf(),
        line: None,
        column: None,
        reason: e.to_string(),
    })?;
    FileDirectory::parse(path, &text)
}

type LoadedMetadata = (Vec<u8>, u32, runtime::TwinEventIndices);

fn load_metadata(path: Option<&Path>) -> Result<LoadedMetadata, TestChainError> {
    let Some(path) = path else {
        let bytes = runtime::builtin_metadata();
        let (version, events) =
            runtime::inspect(&bytes).map_err(|source| TestChainError::Metadata {
                path: PathBuf::from("<built-in>"),
                source,
            })?;
        return Ok((bytes, version, events));
    };
    let raw = std::fs::read(path).map_err(|source| TestChainError::MetadataFile {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = match std::str::from_utf8(&raw) {
        Ok(text) if text.trim_start().starts_with("0x") => {
            hex::decode(text.trim().trim_start_matches("0x")).map_err(|e| {
                TestChainError::Metadata {
                    path: path.to_path_buf(),
                    source: runtime::MetadataError::Decode(format!("bad hex: {e}")),
                }
            })?
        }
        _ => raw,
    };
    let (version, events) =
        runtime::inspect(&bytes).map_err(|source| TestChainError::Metadata {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((bytes, version, events))
}

async fn watch_twins(chain: Arc<Chain>, path: PathBuf, poll: Duration, stop: CancellationToken) {
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(poll);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(now) = std::fs::read(&path) else {
            continue;
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        last = Some(now.clone());
        match FileDirectory::parse(&path, &String::from_utf8_lossy(&now)) {
            Ok(twins) => {
                if let Some(block) = chain.set_twins(twins) {
                    tracing::info!(number = block.number, "twins changed: block sealed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "twins file refused; serving the last good one"),
        }
    }
}

async fn seal_periodically(chain: Arc<Chain>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => { chain.seal_empty(); }
        }
    }
}

impl TestChain {
    /// Settings for an in-process relay reading twins from this chain.
    pub fn relay_config(&self, extra: &[&str]) -> rmb_relay::config::Config {
        let mut args: Vec<std::ffi::OsString> = vec![
            "rmb-relay".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--substrate".into(),
            self.url().into(),
            "--substrate-timeout-ms".into(),
            "2000".into(),
            "--drain-seconds".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(Into::into));
        rmb_relay::config::Config::load_from(args)
            .unwrap_or_else(|e| panic!("relay config for the test chain: {e}"))
    }
}
