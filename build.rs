//! Compiles `proto/{client,peer,storage}.proto` with protox (pure Rust), so a fresh machine needs
//! no `protoc`. All three are package `epaxos.v1` and end up in one generated module.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(["client.proto", "peer.proto", "storage.proto"])?;
    // The client listener's reflection describes the client contract only: its own descriptor
    // set, compiled from client.proto alone (which imports nothing).
    let mut client = protox::Compiler::new(["proto"])?;
    client.include_source_info(true).include_imports(true);
    client.open_files(["client.proto"])?;
    fs::write(
        out_dir.join("client_descriptor.bin"),
        client.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .compile_fds(compiler.file_descriptor_set())?;
    compile_etcd()?;
    Ok(())
}

/// The vendored subset of etcd's KV API (`proto/etcd/rpc.proto`), client side only, for
/// `client bench --system etcd`. Its own package (`etcdserverpb`), so it lands in its own file
/// that only the client binary includes.
fn compile_etcd() -> Result<(), Box<dyn std::error::Error>> {
    let mut etcd = protox::Compiler::new(["proto/etcd"])?;
    etcd.include_imports(true);
    etcd.open_files(["rpc.proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .bytes(".")
        .compile_fds(etcd.file_descriptor_set())?;
    Ok(())
}
