//! Generates the wire types from `proto/types.proto` with protox, so building
//! needs no `protoc` binary on the machine.
//!
//! It also generates the relay's routing copy of the envelope, `rmb.route.Envelope`: the
//! descriptor of `rmb.types.Envelope` itself under another package, so the two cannot differ
//! in a field, with `Bytes` for its bytes fields so that decoding a frame shares its payload
//! and signature instead of copying them. It is never sent.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/types.proto");
    let mut descriptors = protox::compile(["proto/types.proto"], ["proto"])?;
    let types = descriptors
        .file
        .iter()
        .find(|f| f.package.as_deref() == Some("rmb.types"))
        .ok_or("types.proto declares no package rmb.types")?;
    let mut route = types.clone();
    route.name = Some("route.proto".into());
    route.package = Some("rmb.route".into());
    route.dependency = vec![types.name.clone().unwrap_or_default()];
    route.source_code_info = None;
    // Field types are fully qualified (`.rmb.types.Address`), so they still name the wire types.
    route
        .message_type
        .retain(|m| m.name.as_deref() == Some("Envelope"));
    if route.message_type.len() != 1 {
        return Err("types.proto declares no Envelope".into());
    }
    descriptors.file.push(route);
    prost_build::Config::new()
        .bytes([".rmb.route"])
        .compile_fds(descriptors)?;
    Ok(())
}
