//! Compiles proto/theta.proto with a vendored protoc (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Log entries are read in bulk: their byte fields share the decoded message buffer.
    config.bytes([".theta.v1.Entry"]);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("theta_descriptor.bin")).compile_with_config(
        config,
        &["proto/theta.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/theta.proto");
    Ok(())
}
