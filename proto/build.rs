//! Generates the wire types from `proto/types.proto` with protox, so building
//! needs no `protoc` binary on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/types.proto");
    let descriptors = protox::compile(["proto/types.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
