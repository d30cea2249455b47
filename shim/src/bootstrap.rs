//! The answer to `start`, in the protocol containerd asked in.
//!
//! containerd 1.6 to 2.2 read the shim's socket address from its stdout as
//! plain text (stdin holds the runtime options, a protobuf Any, or
//! nothing). containerd 2.3 first writes `BootstrapParams`
//! (`containerd.runtime.bootstrap.v1`, protobuf) to stdin and reads a
//! `BootstrapResult` back; it still passes the old flags and environment
//! and still takes a plain address, which it documents as deprecated. So
//! the shim answers a BootstrapParams with a BootstrapResult (ttrpc, task
//! API version 2) and anything else, including nothing and garbage, with
//! the plain address: what is on stdin never makes `start` fail.
//!
//! containerd-shim-protos 0.11 has no binding for these two messages, and
//! the shim reads and writes only a few scalar fields, so they are coded
//! here with protobuf's streams (field numbers of containerd v2.3.4's
//! `api/runtime/bootstrap/v1/bootstrap.proto`).

use containerd_shim::protos::protobuf::rt::WireType;
use containerd_shim::protos::protobuf::{CodedInputStream, CodedOutputStream};

/// The fields of containerd's BootstrapParams the shim looks at.
#[derive(Debug, Default, PartialEq)]
pub struct BootstrapParams {
    pub instance_id: String,
    pub namespace: String,
    pub containerd_version: String,
    pub containerd_ttrpc_address: String,
    pub containerd_grpc_address: String,
}

/// How containerd asked.
#[derive(Debug, PartialEq)]
pub enum StartRequest {
    /// Plain address on stdout (containerd before 2.3).
    Address,
    /// BootstrapResult on stdout (containerd 2.3+).
    Bootstrap(BootstrapParams),
}

// BootstrapParams fields (string unless noted).
const INSTANCE_ID: u32 = 1;
const NAMESPACE: u32 = 2;
const CONTAINERD_VERSION: u32 = 4;
const CONTAINERD_TTRPC_ADDRESS: u32 = 5;
const CONTAINERD_GRPC_ADDRESS: u32 = 6;
// BootstrapResult fields.
const RESULT_VERSION: u32 = 1; // int32
const RESULT_ADDRESS: u32 = 2;
const RESULT_PROTOCOL: u32 = 3;

/// The task API version the shim serves (containerd's "shim v2").
pub const TASK_API_VERSION: i32 = 2;

/// What containerd's stdin says about the protocol. A BootstrapParams is
/// told from a runtime-options Any (fields 1 and 2 only, the type URL and
/// the value) by the fields only BootstrapParams has: containerd's version
/// and addresses.
pub fn parse(stdin: &[u8]) -> StartRequest {
    match decode_params(stdin) {
        Some(p) if !p.containerd_version.is_empty() || !p.containerd_ttrpc_address.is_empty() => {
            StartRequest::Bootstrap(p)
        }
        _ => StartRequest::Address,
    }
}

fn decode_params(bytes: &[u8]) -> Option<BootstrapParams> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut p = BootstrapParams::default();
    while let Some(tag) = input.read_raw_tag_or_eof().ok()? {
        let wire_type = WireType::new(tag & 7)?;
        let field = match tag >> 3 {
            INSTANCE_ID => &mut p.instance_id,
            NAMESPACE => &mut p.namespace,
            CONTAINERD_VERSION => &mut p.containerd_version,
            CONTAINERD_TTRPC_ADDRESS => &mut p.containerd_ttrpc_address,
            CONTAINERD_GRPC_ADDRESS => &mut p.containerd_grpc_address,
            // log level, binary, extensions, socket dir, and fields of
            // later versions.
            _ => {
                input.skip_field(wire_type).ok()?;
                continue;
            }
        };
        if wire_type != WireType::LengthDelimited {
            return None;
        }
        *field = input.read_string().ok()?;
    }
    Some(p)
}

/// What the shim writes to stdout for containerd, `address` being its
/// socket (`unix:///run/containerd/s/...`).
pub fn reply(request: &StartRequest, address: &str) -> Vec<u8> {
    match request {
        StartRequest::Address => address.as_bytes().to_vec(),
        StartRequest::Bootstrap(_) => {
            let mut out = Vec::new();
            let mut os = CodedOutputStream::vec(&mut out);
            // Writing into a Vec cannot fail.
            let _ = os.write_int32(RESULT_VERSION, TASK_API_VERSION);
            let _ = os.write_string(RESULT_ADDRESS, address);
            let _ = os.write_string(RESULT_PROTOCOL, "ttrpc");
            let _ = os.flush();
            drop(os);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::protos::protobuf::Message;

    /// What containerd v2.3.4 wrote to the shim's stdin for `ctr run`
    /// (captured with a logging wrapper around the shim).
    const V2_3_4_PARAMS: &[u8] = b"\x0a\x02p1\x12\x05skiff\x22\x06v2.3.4\
        \x2a\x1e/tmp/c23/containerd.sock.ttrpc\x32\x18/tmp/c23/containerd.sock\
        \x3a\x2e/root/.cache/skiff/containerd-2.3.4/containerd\
        \x4a\x11/run/containerd/s";

    #[test]
    fn containerd_2_3_params_get_a_bootstrap_result() {
        let req = parse(V2_3_4_PARAMS);
        assert_eq!(
            req,
            StartRequest::Bootstrap(BootstrapParams {
                instance_id: "p1".into(),
                namespace: "skiff".into(),
                containerd_version: "v2.3.4".into(),
                containerd_ttrpc_address: "/tmp/c23/containerd.sock.ttrpc".into(),
                containerd_grpc_address: "/tmp/c23/containerd.sock".into(),
            })
        );
        // Decoded as containerd decodes a BootstrapResult.
        let out = reply(&req, "unix:///run/containerd/s/abc");
        let mut input = CodedInputStream::from_bytes(&out);
        let (mut version, mut address, mut protocol) = (0, String::new(), String::new());
        while let Some(tag) = input.read_raw_tag_or_eof().unwrap() {
            match tag {
                0x08 => version = input.read_int32().unwrap(),
                0x12 => address = input.read_string().unwrap(),
                0x1a => protocol = input.read_string().unwrap(),
                other => panic!("unexpected tag {other:#x}"),
            }
        }
        assert_eq!(
            (version, address.as_str(), protocol.as_str()),
            (2, "unix:///run/containerd/s/abc", "ttrpc")
        );
    }

    #[test]
    fn older_containerd_gets_the_plain_address() {
        let options = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: b"\x12\x10/etc/skiff/x.toml".to_vec(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap();
        for stdin in [&b""[..], &options, b"\xff\xfe garbage", b"{\"id\":\"x\"}"] {
            let req = parse(stdin);
            assert_eq!(req, StartRequest::Address, "{stdin:?}");
            assert_eq!(reply(&req, "unix:///s/x"), b"unix:///s/x");
        }
    }

    #[test]
    fn truncated_params_are_not_trusted() {
        for n in 1..V2_3_4_PARAMS.len() {
            // Any prefix either parses to the fields it holds or reads as
            // the old protocol; none panics.
            let _ = parse(&V2_3_4_PARAMS[..n]);
        }
        assert_eq!(parse(&V2_3_4_PARAMS[..10]), StartRequest::Address);
    }
}
