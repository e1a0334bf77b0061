//! Compiles the `.proto` files with protox (pure Rust), so the build needs no system `protoc`.
//! Messages and the admin API's gRPC services go to `execmesh.v1.rs`; the encoded descriptor set
//! goes to `execmesh_descriptor.bin` for server reflection.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/execmesh/v1/exec.proto",
        "proto/execmesh/v1/audit.proto",
        "proto/execmesh/v1/admin.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("execmesh_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect()` helpers: the proto crate stays transport-free.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
