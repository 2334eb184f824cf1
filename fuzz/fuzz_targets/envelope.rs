//! A websocket frame or federation batch entry: decode, classify, compute the challenge and
//! verify the signature against a fixed key (ed25519 id0 from the interop vectors, so seeds
//! built from the vectors reach the success path). The relay's routing decoder must accept
//! exactly what the wire decoder accepts and read the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;

const ID0_ED25519: [u8; 32] = [
    0x84, 0xa2, 0x4f, 0xf3, 0x6e, 0xfe, 0xf6, 0x06, 0x8a, 0x56, 0xac, 0x96, 0x51, 0x25, 0xf9, 0x4d,
    0x60, 0xdc, 0xac, 0x42, 0x8d, 0x2b, 0x3e, 0x45, 0xfa, 0x9a, 0x16, 0x08, 0x37, 0xbe, 0x89, 0xae,
];

fuzz_target!(|data: &[u8]| {
    // Same bound as the relay's default --max-envelope-bytes order of magnitude.
    let routed = rmb_proto::decode_for_routing(&bytes::Bytes::copy_from_slice(data), 64 * 1024);
    let Ok(env) = rmb_proto::decode_envelope(data, 64 * 1024) else {
        assert!(routed.is_err(), "the routing decoder took what the wire decoder refused");
        return;
    };
    let routed = routed.expect("the routing decoder refused what the wire decoder took");
    assert_eq!(routed.to_wire(), env);
    let _ = env.kind();
    let now = rmb_proto::unix_now();
    let _ = env.is_expired(now);
    let _ = env.ttl_remaining(now);
    let _ = env.has_tag("x");
    let _ = env.source_twin();
    let _ = env.destination_twin();
    let _ = rmb_proto::challenge(&env);
    let _ = rmb_identity::verify_envelope(&env, &ID0_ED25519);
    // Re-encoding what we accepted must decode to the same envelope.
    let again = rmb_proto::decode_envelope(&env.to_bytes(), usize::MAX).expect("re-decode");
    assert_eq!(again, env);
});
