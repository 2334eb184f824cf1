//! The relay's TOML `--config` file, through the real loader (`Config::load_from`), which reads
//! it from disk: each input is written to one per-process file on tmpfs when available.
#![no_main]

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("rmb-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let args: Vec<OsString> = vec!["rmb-relay".into(), "--config".into(), path.into()];
    let _ = rmb_relay::config::Config::load_from(args);
});
