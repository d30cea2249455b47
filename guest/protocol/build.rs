//! Generates the message types and the synchronous ttrpc client/server
//! stubs from `proto/agent.proto` with ttrpc-codegen's pure-Rust parser, so
//! building needs no `protoc`.

fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=proto/agent.proto");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            gen_mod: true,
            ..Default::default()
        })
        .run()
        .expect("ttrpc codegen of proto/agent.proto failed");
}
