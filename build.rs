//! Compiles `proto/{client,peer,storage}.proto` with protox (pure Rust), so a fresh machine needs
//! no `protoc`. All three are package `epaxos.v1` and end up in one generated module.
//!
//! It also embeds the git commit (`EPAXOS_GIT_COMMIT`, for `--version` and
//! `epaxos_build_info`), or "unknown" when not built from a git checkout.
use std::process::Command;
use std::{env, fs, path::PathBuf};

/// `git` with `args` in the crate's directory: its trimmed output, if it ran and succeeded.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Emits `EPAXOS_GIT_COMMIT` and asks to run again when HEAD moves.
fn embed_git_commit() {
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => c,
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=EPAXOS_GIT_COMMIT={commit}");
    // HEAD names the branch; the branch's ref (or packed-refs) moves with each commit.
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--git-path", "packed-refs"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    // A path that does not exist would make cargo run this script on every build.
    .filter(|p| std::path::Path::new(p).exists())
    {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    embed_git_commit();
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
