//! Signed extrinsics the test chain accepts: `TfgridModule.update_twin(relay, pk)` from a
//! twin's own account, as `rmb-peer` submits it to publish its relays and encryption key.
//! Only with the built-in metadata, which declares no signed extensions, so the signed
//! payload is the call itself.

use parity_scale_codec::{Compact, Decode, Input};
use sp_core::{ed25519, sr25519, Pair as _};

use super::chain::Chain;
use super::runtime::tfchain_runtime::TFGRID_PALLET;
use rmb_identity::twin::split_relays;

/// Call index of `update_twin` in the built-in `TfgridModule` calls.
const UPDATE_TWIN: u8 = 1;

/// Why an extrinsic was refused (JSON-RPC error 1010, "Invalid Transaction", on real nodes).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtrinsicError {
    /// Not a well-formed signed v4 extrinsic.
    #[error("malformed extrinsic: {0}")]
    Malformed(String),
    /// The signature does not verify for the signing account.
    #[error("bad signature")]
    BadSignature,
    /// A call this chain does not execute.
    #[error("unsupported call {pallet}/{call}: only TfgridModule.update_twin is executed")]
    Unsupported {
        /// Pallet index.
        pallet: u8,
        /// Call index.
        call: u8,
    },
    /// The signer has no twin.
    #[error("no twin for the signing account")]
    NoTwin,
}

/// What `update_twin` asks for.
#[derive(Debug, Decode)]
struct UpdateTwin {
    relay: Option<Vec<u8>>,
    pk: Option<Vec<u8>>,
}

/// Verifies and executes `bytes` (a SCALE `Vec<u8>`-wrapped extrinsic, as RPC carries it),
/// sealing a block with `TwinUpdated`. Returns the number of the sealed block.
pub fn apply(chain: &Chain, bytes: &[u8]) -> Result<u32, ExtrinsicError> {
    let malformed = |e: parity_scale_codec::Error| ExtrinsicError::Malformed(e.to_string());
    let input = &mut &bytes[..];
    let Compact(len) = Compact::<u32>::decode(input).map_err(malformed)?;
    if len as usize != input.len() {
        return Err(ExtrinsicError::Malformed(
            "length prefix does not match".into(),
        ));
    }
    let version = input.read_byte().map_err(malformed)?;
    if version != 0x84 {
        return Err(ExtrinsicError::Malformed(format!(
            "version byte {version:#04x}: a signed v4 extrinsic (0x84) is expected"
        )));
    }
    // MultiAddress::Id(AccountId32)
    if input.read_byte().map_err(malformed)? != 0 {
        return Err(ExtrinsicError::Malformed(
            "address must be an account id".into(),
        ));
    }
    let account = <[u8; 32]>::decode(input).map_err(malformed)?;
    let scheme = input.read_byte().map_err(malformed)?;
    let signature = <[u8; 64]>::decode(input).map_err(malformed)?;
    let call = input.to_vec();
    let payload = if call.len() > 256 {
        sp_crypto_hashing::blake2_256(&call).to_vec()
    } else {
        call.clone()
    };
    let valid = match scheme {
        0 => ed25519::Pair::verify(
            &ed25519::Signature::from_raw(signature),
            &payload,
            &ed25519::Public::from_raw(account),
        ),
        1 => sr25519::Pair::verify(
            &sr25519::Signature::from_raw(signature),
            &payload,
            &sr25519::Public::from_raw(account),
        ),
        _ => false,
    };
    if !valid {
        return Err(ExtrinsicError::BadSignature);
    }
    let call_input = &mut &call[..];
    let pallet = call_input.read_byte().map_err(malformed)?;
    let index = call_input.read_byte().map_err(malformed)?;
    if (pallet, index) != (TFGRID_PALLET, UPDATE_TWIN) {
        return Err(ExtrinsicError::Unsupported {
            pallet,
            call: index,
        });
    }
    let update = UpdateTwin::decode(call_input).map_err(malformed)?;
    let mut twins = chain.twins();
    let twin = twins
        .iter_mut()
        .find(|t| t.account == account)
        .ok_or(ExtrinsicError::NoTwin)?;
    twin.relays = update
        .relay
        .map(|r| split_relays(&String::from_utf8_lossy(&r)))
        .unwrap_or_default();
    twin.pk = update.pk.filter(|pk| !pk.is_empty());
    let block = chain.set_twins(twins).unwrap_or_else(|| chain.seal_empty());
    Ok(block.number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testchain::runtime::{builtin_metadata, inspect};
    use parity_scale_codec::Encode;
    use rmb_identity::Twin;

    fn signed(pair: &sr25519::Pair, call: &[u8]) -> Vec<u8> {
        let mut ext = vec![0x84, 0x00];
        ext.extend_from_slice(&pair.public().0);
        ext.push(1);
        ext.extend_from_slice(&pair.sign(call).0);
        ext.extend_from_slice(call);
        ext.encode()
    }

    #[test]
    fn update_twin_applies_only_with_the_twin_signature() {
        let pair = sr25519::Pair::from_seed(&[1; 32]);
        let twin = Twin {
            id: 5,
            account: pair.public().0,
            relays: vec![],
            pk: None,
        };
        let (_, events) = inspect(&builtin_metadata()).expect("metadata");
        let chain = Chain::new(vec![twin], events);
        let mut call = vec![TFGRID_PALLET, UPDATE_TWIN];
        (Some(b"a.example_b.example".to_vec()), None::<Vec<u8>>).encode_to(&mut call);

        let mut tampered = signed(&pair, &call);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(apply(&chain, &tampered), Err(ExtrinsicError::BadSignature));
        assert!(chain.twins()[0].relays.is_empty());

        let number = apply(&chain, &signed(&pair, &call)).expect("applied");
        assert_eq!(number, chain.head().number);
        assert_eq!(chain.twins()[0].relays, vec!["a.example", "b.example"]);

        let other = sr25519::Pair::from_seed(&[2; 32]);
        assert_eq!(
            apply(&chain, &signed(&other, &call)),
            Err(ExtrinsicError::NoTwin)
        );
        assert!(matches!(
            apply(&chain, &[1, 2, 3]),
            Err(ExtrinsicError::Malformed(_))
        ));
    }
}
