//! The chain itself: a list of blocks, each with the full storage it was sealed with. Every
//! block is final as soon as it exists; a block is sealed when the twins change (or on a
//! timer), carrying `TwinStored` / `TwinUpdated` / `TwinDeleted` events for what changed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parity_scale_codec::{Compact, Encode};
use parking_lot::Mutex;
use rmb_identity::Twin;
use sp_crypto_hashing::{blake2_128, blake2_256, twox_128};
use tokio::sync::broadcast;

use super::runtime::{
    bounded_collections::bounded_vec::BoundedVec, frame_system, pallet_tfgrid,
    primitive_types::H256, sp_core::crypto::AccountId32, TwinEventIndices,
};

/// A 32-byte block hash.
pub type Hash = [u8; 32];

/// Blocks kept for queries at older hashes; older ones are forgotten.
const KEPT_BLOCKS: usize = 4096;

/// One sealed block.
#[derive(Debug)]
pub struct Block {
    /// Height.
    pub number: u32,
    /// blake2-256 of the SCALE-encoded header, as Substrate computes it.
    pub hash: Hash,
    /// Parent block hash (zeros for genesis).
    pub parent: Hash,
    /// A digest of the storage, standing in for the state root.
    pub state_root: Hash,
    /// The storage as of this block.
    pub storage: Arc<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Block {
    /// The header as JSON-RPC clients expect it.
    pub fn header_json(&self) -> serde_json::Value {
        serde_json::json!({
            "parentHash": hex0x(&self.parent),
            "number": format!("0x{:x}", self.number),
            "stateRoot": hex0x(&self.state_root),
            "extrinsicsRoot": hex0x(&EMPTY_ROOT),
            "digest": { "logs": [] },
        })
    }
}

const EMPTY_ROOT: Hash = [0u8; 32];

/// `0x`-prefixed lower-case hex.
pub fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// The chain: blocks, the twins of the newest one, and a feed of new blocks.
pub struct Chain {
    inner: Mutex<Inner>,
    events: TwinEventIndices,
    new_blocks: broadcast::Sender<Arc<Block>>,
}

struct Inner {
    blocks: VecDeque<Arc<Block>>,
    by_hash: HashMap<Hash, Arc<Block>>,
    genesis: Hash,
    head: Arc<Block>,
    twins: BTreeMap<u32, Twin>,
}

impl Chain {
    /// A chain whose genesis block holds `twins`.
    pub fn new(twins: Vec<Twin>, events: TwinEventIndices) -> Arc<Chain> {
        let twins: BTreeMap<u32, Twin> = twins.into_iter().map(|t| (t.id, t)).collect();
        let storage = build_storage(&twins, 0, [0u8; 32], Vec::new());
        let genesis = Arc::new(seal(0, [0u8; 32], storage));
        let (new_blocks, _) = broadcast::channel(256);
        let mut by_hash = HashMap::new();
        by_hash.insert(genesis.hash, genesis.clone());
        Arc::new(Chain {
            inner: Mutex::new(Inner {
                genesis: genesis.hash,
                head: genesis.clone(),
                blocks: VecDeque::from([genesis]),
                by_hash,
                twins,
            }),
            events,
            new_blocks,
        })
    }

    /// The genesis hash.
    pub fn genesis(&self) -> Hash {
        self.inner.lock().genesis
    }

    /// The newest block (always final).
    pub fn head(&self) -> Arc<Block> {
        self.inner.lock().head.clone()
    }

    /// The block with this hash, if still kept.
    pub fn block(&self, hash: &Hash) -> Option<Arc<Block>> {
        self.inner.lock().by_hash.get(hash).cloned()
    }

    /// The block at this height, if still kept.
    pub fn block_at(&self, number: u32) -> Option<Arc<Block>> {
        let inner = self.inner.lock();
        let first = inner.blocks.front()?.number;
        let index = number.checked_sub(first)? as usize;
        inner.blocks.get(index).cloned()
    }

    /// The twins as of the newest block.
    pub fn twins(&self) -> Vec<Twin> {
        self.inner.lock().twins.values().cloned().collect()
    }

    /// New blocks as they are sealed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Block>> {
        self.new_blocks.subscribe()
    }

    /// Replaces the twin set; seals a block with events when anything changed. Returns the
    /// new block, or `None` when nothing changed.
    pub fn set_twins(&self, twins: Vec<Twin>) -> Option<Arc<Block>> {
        let next: BTreeMap<u32, Twin> = twins.into_iter().map(|t| (t.id, t)).collect();
        let block = {
            let mut inner = self.inner.lock();
            let events = self.diff_events(&inner.twins, &next);
            if events.is_empty() {
                return None;
            }
            inner.twins = next;
            self.push_block(&mut inner, events)
        };
        let _ = self.new_blocks.send(block.clone());
        Some(block)
    }

    /// Seals an empty block (a chain keeps producing blocks even when twins do not change).
    pub fn seal_empty(&self) -> Arc<Block> {
        let block = {
            let mut inner = self.inner.lock();
            self.push_block(&mut inner, Vec::new())
        };
        let _ = self.new_blocks.send(block.clone());
        block
    }

    fn push_block(&self, inner: &mut Inner, events: Vec<Vec<u8>>) -> Arc<Block> {
        let parent = inner.head.clone();
        let number = parent.number + 1;
        let storage = build_storage(&inner.twins, number, parent.hash, events);
        let block = Arc::new(seal(number, parent.hash, storage));
        inner.by_hash.insert(block.hash, block.clone());
        inner.blocks.push_back(block.clone());
        inner.head = block.clone();
        while inner.blocks.len() > KEPT_BLOCKS {
            if let Some(old) = inner.blocks.pop_front() {
                inner.by_hash.remove(&old.hash);
            }
        }
        block
    }

    /// Encoded `(RuntimeEvent)` bytes for every difference between two twin sets.
    fn diff_events(&self, old: &BTreeMap<u32, Twin>, new: &BTreeMap<u32, Twin>) -> Vec<Vec<u8>> {
        let mut events = Vec::new();
        for (id, twin) in new {
            let variant = match old.get(id) {
                None => self.events.stored,
                Some(previous) if previous != twin => self.events.updated,
                Some(_) => continue,
            };
            let mut event = vec![self.events.pallet, variant];
            chain_twin(twin).encode_to(&mut event);
            events.push(event);
        }
        if let Some(deleted) = self.events.deleted {
            for id in old.keys().filter(|id| !new.contains_key(id)) {
                let mut event = vec![self.events.pallet, deleted];
                id.encode_to(&mut event);
                events.push(event);
            }
        }
        events
    }
}

/// The on-chain record for a twin.
pub fn chain_twin(twin: &Twin) -> pallet_tfgrid::types::Twin<AccountId32> {
    let relay = (!twin.relays.is_empty())
        .then(|| BoundedVec(rmb_identity::twin::join_relays(&twin.relays).into_bytes()));
    pallet_tfgrid::types::Twin {
        id: twin.id,
        account_id: AccountId32(twin.account),
        relay,
        entities: Vec::new(),
        pk: twin.pk.clone().map(BoundedVec),
    }
}

/// `twox128(pallet) ++ twox128(entry)`.
pub fn storage_prefix(pallet: &str, entry: &str) -> Vec<u8> {
    let mut key = twox_128(pallet.as_bytes()).to_vec();
    key.extend_from_slice(&twox_128(entry.as_bytes()));
    key
}

/// A `Blake2_128Concat` map key.
pub fn map_key(pallet: &str, entry: &str, key: &impl Encode) -> Vec<u8> {
    let encoded = key.encode();
    let mut full = storage_prefix(pallet, entry);
    full.extend_from_slice(&blake2_128(&encoded));
    full.extend_from_slice(&encoded);
    full
}

fn build_storage(
    twins: &BTreeMap<u32, Twin>,
    number: u32,
    parent: Hash,
    events: Vec<Vec<u8>>,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut storage = BTreeMap::new();
    for twin in twins.values() {
        storage.insert(
            map_key("TfgridModule", "Twins", &twin.id),
            chain_twin(twin).encode(),
        );
        storage.insert(
            map_key(
                "TfgridModule",
                "TwinIdByAccountID",
                &AccountId32(twin.account),
            ),
            twin.id.encode(),
        );
    }
    storage.insert(storage_prefix("System", "Number"), number.encode());
    storage.insert(storage_prefix("System", "ParentHash"), parent.encode());
    storage.insert(storage_prefix("System", "Events"), encode_events(events));
    let now_ms = rmb_common::now_ms();
    storage.insert(storage_prefix("Timestamp", "Now"), now_ms.encode());
    storage
}

/// `Vec<EventRecord<RuntimeEvent, H256>>`, from already encoded `RuntimeEvent`s.
fn encode_events(events: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Compact(events.len() as u32).encode();
    for event in events {
        frame_system::Phase::Finalization.encode_to(&mut out);
        out.extend_from_slice(&event);
        Vec::<H256>::new().encode_to(&mut out);
    }
    out
}

fn seal(number: u32, parent: Hash, storage: BTreeMap<Vec<u8>, Vec<u8>>) -> Block {
    let state_root = blake2_256(&storage.encode());
    // Substrate header: parent, compact number, state root, extrinsics root, digest (empty).
    let mut header = parent.encode();
    Compact(number).encode_to(&mut header);
    state_root.encode_to(&mut header);
    EMPTY_ROOT.encode_to(&mut header);
    Compact(0u32).encode_to(&mut header);
    Block {
        number,
        hash: blake2_256(&header),
        parent,
        state_root,
        storage: Arc::new(storage),
    }
}
