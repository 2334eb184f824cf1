//! The YAML twins file (`--twins`), as the relay and peer parse it on start and on reload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rmb_identity::FileDirectory;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(twins) = FileDirectory::parse(std::path::Path::new("fuzz.yaml"), text) {
        for twin in twins {
            let _ = twin.relays.len();
        }
    }
});
