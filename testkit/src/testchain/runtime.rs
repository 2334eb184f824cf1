//! The runtime the test chain pretends to be: the types tfchain stores twins and events with,
//! the metadata describing them, and where in a metadata blob the twin events live.
//!
//! The Rust types below only exist to be described by `scale-info` and encoded by
//! `parity-scale-codec`. Their modules mirror the upstream crate paths (`sp_core::crypto`,
//! `pallet_tfgrid::types`, …) so that, once our crate prefix is stripped from the registry,
//! clients that recognise well-known type paths (polkadot.js) see familiar names.

use frame_metadata::v14::{
    ExtrinsicMetadata, PalletCallMetadata, PalletConstantMetadata, PalletEventMetadata,
    PalletMetadata, PalletStorageMetadata, RuntimeMetadataV14, StorageEntryMetadata,
    StorageEntryModifier, StorageEntryType, StorageHasher,
};
use frame_metadata::{RuntimeMetadata, RuntimeMetadataPrefixed};
use parity_scale_codec::{Decode, Encode};
use scale_info::{meta_type, PortableRegistry, TypeDef};

#[allow(missing_docs, dead_code)]
pub mod primitive_types {
    use super::*;
    #[derive(Encode, Decode, scale_info::TypeInfo, Clone, Copy)]
    pub struct H256(pub [u8; 32]);
}

#[allow(missing_docs, dead_code)]
pub mod sp_core {
    pub mod crypto {
        use super::super::*;
        #[derive(Encode, Decode, scale_info::TypeInfo, Clone, Copy, PartialEq, Eq)]
        pub struct AccountId32(pub [u8; 32]);
    }
}

#[allow(missing_docs, dead_code)]
pub mod bounded_collections {
    pub mod bounded_vec {
        use super::super::*;
        #[derive(Encode, Decode, scale_info::TypeInfo, Clone, PartialEq, Eq)]
        pub struct BoundedVec<T>(pub Vec<T>);
    }
}

#[allow(missing_docs, dead_code)]
pub mod pallet_tfgrid {
    pub mod types {
        use super::super::bounded_collections::bounded_vec::BoundedVec;
        use super::super::*;

        /// The tfchain twin record (DESIGN §4).
        #[derive(Encode, Decode, scale_info::TypeInfo, Clone, PartialEq, Eq)]
        pub struct Twin<AccountId> {
            pub id: u32,
            pub account_id: AccountId,
            pub relay: Option<BoundedVec<u8>>,
            pub entities: Vec<EntityProof>,
            pub pk: Option<BoundedVec<u8>>,
        }

        #[derive(Encode, Decode, scale_info::TypeInfo, Clone, PartialEq, Eq)]
        pub struct EntityProof {
            pub entity_id: u32,
            pub signature: Vec<u8>,
        }
    }

    pub mod pallet {
        use super::super::bounded_collections::bounded_vec::BoundedVec;
        use super::super::sp_core::crypto::AccountId32;
        use super::super::*;
        use super::types::Twin;

        #[derive(Encode, Decode, scale_info::TypeInfo)]
        pub enum Event {
            #[codec(index = 0)]
            TwinStored(Twin<AccountId32>),
            #[codec(index = 1)]
            TwinUpdated(Twin<AccountId32>),
            #[codec(index = 2)]
            TwinDeleted(u32),
        }

        #[derive(Encode, Decode, scale_info::TypeInfo)]
        #[allow(non_camel_case_types)]
        pub enum Call {
            #[codec(index = 0)]
            create_twin {
                relay: Option<BoundedVec<u8>>,
                pk: Option<BoundedVec<u8>>,
            },
            #[codec(index = 1)]
            update_twin {
                relay: Option<BoundedVec<u8>>,
                pk: Option<BoundedVec<u8>>,
            },
        }
    }
}

#[allow(missing_docs, dead_code)]
pub mod frame_system {
    use super::primitive_types::H256;
    use super::*;

    #[derive(Encode, Decode, scale_info::TypeInfo)]
    pub enum Phase {
        #[codec(index = 0)]
        ApplyExtrinsic(u32),
        #[codec(index = 1)]
        Finalization,
        #[codec(index = 2)]
        Initialization,
    }

    #[derive(Encode, Decode, scale_info::TypeInfo)]
    pub struct EventRecord<E, T> {
        pub phase: Phase,
        pub event: E,
        pub topics: Vec<T>,
    }

    pub mod pallet {
        use super::super::*;
        #[derive(Encode, Decode, scale_info::TypeInfo)]
        pub enum Event {
            #[codec(index = 0)]
            CodeUpdated,
        }
        #[derive(Encode, Decode, scale_info::TypeInfo)]
        #[allow(non_camel_case_types)]
        pub enum Call {
            #[codec(index = 0)]
            remark { remark: Vec<u8> },
        }
    }

    /// Storage value type of `System.Events`.
    pub type Events = Vec<EventRecord<super::tfchain_runtime::RuntimeEvent, H256>>;
}

#[allow(missing_docs, dead_code)]
pub mod pallet_timestamp {
    pub mod pallet {
        use super::super::*;
        #[derive(Encode, Decode, scale_info::TypeInfo)]
        #[allow(non_camel_case_types)]
        pub enum Call {
            #[codec(index = 0)]
            set {
                #[codec(compact)]
                now: u64,
            },
        }
    }
}

#[allow(missing_docs, dead_code)]
pub mod sp_runtime {
    use super::*;
    #[derive(Encode, Decode, scale_info::TypeInfo)]
    pub enum MultiAddress<AccountId, AccountIndex> {
        #[codec(index = 0)]
        Id(AccountId),
        #[codec(index = 1)]
        Index(#[codec(compact)] AccountIndex),
        #[codec(index = 2)]
        Raw(Vec<u8>),
        #[codec(index = 3)]
        Address32([u8; 32]),
        #[codec(index = 4)]
        Address20([u8; 20]),
    }

    #[derive(Encode, Decode, scale_info::TypeInfo)]
    pub enum MultiSignature {
        #[codec(index = 0)]
        Ed25519([u8; 64]),
        #[codec(index = 1)]
        Sr25519([u8; 64]),
        #[codec(index = 2)]
        Ecdsa([u8; 65]),
    }

    pub mod generic {
        use super::super::*;
        #[derive(Encode, Decode, scale_info::TypeInfo)]
        pub struct UncheckedExtrinsic<Address, Call, Signature, Extra> {
            pub signature: Option<(Address, Signature, Extra)>,
            pub function: Call,
        }
    }
}

#[allow(missing_docs, dead_code)]
pub mod tfchain_runtime {
    use super::*;

    /// Pallet index of `TfgridModule` in the built-in metadata.
    pub const TFGRID_PALLET: u8 = 11;

    #[derive(Encode, Decode, scale_info::TypeInfo)]
    pub enum RuntimeEvent {
        #[codec(index = 0)]
        System(super::frame_system::pallet::Event),
        #[codec(index = 11)]
        TfgridModule(super::pallet_tfgrid::pallet::Event),
    }

    #[derive(Encode, Decode, scale_info::TypeInfo)]
    pub enum RuntimeCall {
        #[codec(index = 0)]
        System(super::frame_system::pallet::Call),
        #[codec(index = 1)]
        Timestamp(super::pallet_timestamp::pallet::Call),
        #[codec(index = 11)]
        TfgridModule(super::pallet_tfgrid::pallet::Call),
    }

    #[derive(scale_info::TypeInfo)]
    pub struct Runtime;

    pub type Address = super::sp_runtime::MultiAddress<super::sp_core::crypto::AccountId32, u32>;
    pub type Extrinsic = super::sp_runtime::generic::UncheckedExtrinsic<
        Address,
        RuntimeCall,
        super::sp_runtime::MultiSignature,
        (),
    >;
}

/// Where the twin events sit in the chain's event enum: the outer (pallet) index and the
/// variant index of each event we emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwinEventIndices {
    /// `RuntimeEvent` variant of `TfgridModule`.
    pub pallet: u8,
    /// `TwinStored(Twin)`.
    pub stored: u8,
    /// `TwinUpdated(Twin)`.
    pub updated: u8,
    /// `TwinDeleted(u32)`, when the runtime has it.
    pub deleted: Option<u8>,
}

/// Why a metadata blob cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Not SCALE-encoded `RuntimeMetadataPrefixed`.
    #[error("metadata does not decode: {0}")]
    Decode(String),
    /// A version we cannot read pallets from.
    #[error("metadata version {0} is not supported (14 and 15 are)")]
    Version(u32),
    /// The runtime lacks what tfchain twins need.
    #[error("metadata has no {0}")]
    Missing(&'static str),
}

/// The metadata this test chain serves when none is given: V14, as tfchain serves it.
pub fn builtin_metadata() -> Vec<u8> {
    let tfgrid = PalletMetadata {
        name: "TfgridModule",
        storage: Some(PalletStorageMetadata {
            prefix: "TfgridModule",
            entries: vec![
                map_entry::<u32, pallet_tfgrid::types::Twin<sp_core::crypto::AccountId32>>("Twins"),
                map_entry::<sp_core::crypto::AccountId32, u32>("TwinIdByAccountID"),
            ],
        }),
        calls: Some(PalletCallMetadata {
            ty: meta_type::<pallet_tfgrid::pallet::Call>(),
        }),
        event: Some(PalletEventMetadata {
            ty: meta_type::<pallet_tfgrid::pallet::Event>(),
        }),
        constants: vec![],
        error: None,
        index: tfchain_runtime::TFGRID_PALLET,
    };
    let system = PalletMetadata {
        name: "System",
        storage: Some(PalletStorageMetadata {
            prefix: "System",
            entries: vec![
                plain_entry::<u32>("Number", 0u32.encode()),
                plain_entry::<primitive_types::H256>("ParentHash", [0u8; 32].encode()),
                plain_entry::<frame_system::Events>("Events", vec![0]),
            ],
        }),
        calls: Some(PalletCallMetadata {
            ty: meta_type::<frame_system::pallet::Call>(),
        }),
        event: Some(PalletEventMetadata {
            ty: meta_type::<frame_system::pallet::Event>(),
        }),
        // Clients read the address format from here (42: generic Substrate, as tfchain).
        constants: vec![PalletConstantMetadata {
            name: "SS58Prefix",
            ty: meta_type::<u16>(),
            value: 42u16.encode(),
            docs: vec![],
        }],
        error: None,
        index: 0,
    };
    let timestamp = PalletMetadata {
        name: "Timestamp",
        storage: Some(PalletStorageMetadata {
            prefix: "Timestamp",
            entries: vec![plain_entry::<u64>("Now", 0u64.encode())],
        }),
        calls: Some(PalletCallMetadata {
            ty: meta_type::<pallet_timestamp::pallet::Call>(),
        }),
        event: None,
        constants: vec![],
        error: None,
        index: 1,
    };
    let extrinsic = ExtrinsicMetadata {
        ty: meta_type::<tfchain_runtime::Extrinsic>(),
        version: 4,
        signed_extensions: vec![],
    };
    let mut v14 = RuntimeMetadataV14::new(
        vec![system, timestamp, tfgrid],
        extrinsic,
        meta_type::<tfchain_runtime::Runtime>(),
    );
    strip_crate_prefix(&mut v14.types);
    RuntimeMetadataPrefixed::from(v14).encode()
}

fn map_entry<K: scale_info::TypeInfo + 'static, V: scale_info::TypeInfo + 'static>(
    name: &'static str,
) -> StorageEntryMetadata {
    StorageEntryMetadata {
        name,
        modifier: StorageEntryModifier::Optional,
        ty: StorageEntryType::Map {
            hashers: vec![StorageHasher::Blake2_128Concat],
            key: meta_type::<K>(),
            value: meta_type::<V>(),
        },
        default: vec![0],
        docs: vec![],
    }
}

fn plain_entry<V: scale_info::TypeInfo + 'static>(
    name: &'static str,
    default: Vec<u8>,
) -> StorageEntryMetadata {
    StorageEntryMetadata {
        name,
        modifier: StorageEntryModifier::Default,
        ty: StorageEntryType::Plain(meta_type::<V>()),
        default,
        docs: vec![],
    }
}

/// Removes `rmb_testkit::testchain::runtime::` from type paths, leaving the upstream-looking
/// remainder (`sp_core::crypto::AccountId32`).
fn strip_crate_prefix(types: &mut PortableRegistry) {
    let prefix: Vec<&str> = module_path!().split("::").collect();
    for ty in &mut types.types {
        let segments = &mut ty.ty.path.segments;
        if segments.len() > prefix.len()
            && segments.iter().zip(&prefix).all(|(a, b)| a.as_str() == *b)
        {
            segments.drain(..prefix.len());
        }
    }
}

/// The metadata version a blob holds, and the twin event indices found in it.
pub fn inspect(metadata: &[u8]) -> Result<(u32, TwinEventIndices), MetadataError> {
    let prefixed = RuntimeMetadataPrefixed::decode(&mut &metadata[..])
        .map_err(|e| MetadataError::Decode(e.to_string()))?;
    let version = prefixed.1.version();
    let (pallet, types) = match &prefixed.1 {
        RuntimeMetadata::V14(m) => find_pallet(&m.pallets, &m.types, |p| {
            (p.name.as_str(), p.index, p.event.as_ref().map(|e| e.ty.id))
        }),
        RuntimeMetadata::V15(m) => find_pallet(&m.pallets, &m.types, |p| {
            (p.name.as_str(), p.index, p.event.as_ref().map(|e| e.ty.id))
        }),
        _ => return Err(MetadataError::Version(version)),
    }?;
    let (index, event_ty) = pallet;
    let variant = |name: &str| -> Option<u8> {
        let ty = types.resolve(event_ty)?;
        match &ty.type_def {
            TypeDef::Variant(v) => v.variants.iter().find(|x| x.name == name).map(|x| x.index),
            _ => None,
        }
    };
    Ok((
        version,
        TwinEventIndices {
            pallet: index,
            stored: variant("TwinStored").ok_or(MetadataError::Missing("TwinStored event"))?,
            updated: variant("TwinUpdated").ok_or(MetadataError::Missing("TwinUpdated event"))?,
            deleted: variant("TwinDeleted"),
        },
    ))
}

fn find_pallet<'m, P>(
    pallets: &'m [P],
    types: &'m PortableRegistry,
    fields: impl Fn(&'m P) -> (&'m str, u8, Option<u32>),
) -> Result<((u8, u32), &'m PortableRegistry), MetadataError> {
    let (_, index, event) = pallets
        .iter()
        .map(&fields)
        .find(|(name, _, _)| *name == "TfgridModule")
        .ok_or(MetadataError::Missing("TfgridModule pallet"))?;
    let event = event.ok_or(MetadataError::Missing("TfgridModule events"))?;
    Ok(((index, event), types))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_metadata_names_twin_events_and_upstream_paths() {
        let bytes = builtin_metadata();
        let (version, idx) = inspect(&bytes).expect("inspect");
        assert_eq!(version, 14);
        assert_eq!(
            idx,
            TwinEventIndices {
                pallet: 11,
                stored: 0,
                updated: 1,
                deleted: Some(2)
            }
        );
        let prefixed = RuntimeMetadataPrefixed::decode(&mut &bytes[..]).expect("decode");
        let RuntimeMetadata::V14(m) = prefixed.1 else {
            panic!("not v14")
        };
        let paths: Vec<String> = m
            .types
            .types
            .iter()
            .map(|t| t.ty.path.segments.join("::"))
            .collect();
        assert!(paths.iter().any(|p| p == "sp_core::crypto::AccountId32"));
        assert!(paths.iter().any(|p| p == "pallet_tfgrid::types::Twin"));
        assert!(!paths.iter().any(|p| p.starts_with("rmb_testkit")));
    }
}
