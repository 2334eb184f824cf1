//! The peer's local JSON API: request and reply documents pushed by local services (Redis
//! `msgbus.system.local` / `msgbus.system.reply`), and the documents SDK clients read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rmb_peer::gateway::messages::{
    decode_data, parse_address, AddressText, IncomingRequest, IncomingResponse, OutgoingRequest,
    OutgoingResponse,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = serde_json::from_str::<OutgoingRequest>(text) {
        let _ = decode_data(&req.data);
        let _ = serde_json::to_string(&req);
    }
    if let Ok(reply) = serde_json::from_str::<OutgoingResponse>(text) {
        let _ = decode_data(&reply.data);
        if let Some(addr) = parse_address(&reply.destination) {
            let shown = AddressText(&addr).to_string();
            assert_eq!(parse_address(&shown).map(|a| a.twin), Some(addr.twin));
        }
    }
    let _ = serde_json::from_str::<IncomingRequest>(text);
    let _ = serde_json::from_str::<IncomingResponse>(text);
    let _ = parse_address(text);
});
