//! Compiles `proto/epaxos.proto` with protox (pure Rust), so a fresh machine needs no `protoc`.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(["epaxos.proto"])?;
    // The descriptor set also feeds gRPC server reflection.
    fs::write(
        out_dir.join("epaxos_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
