//! Compiles the IRI protos (and cephvol's progress extension) with tonic-prost-build, using the
//! `protoc` binary shipped by `protoc-bin-vendored`, so a fresh machine needs nothing installed.
//! Client stubs and server traits are generated only with the `client` / `server` features; no
//! transport code is generated (callers bring their own channel or server).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Prefer the vendored protoc unless the user points PROTOC somewhere on purpose.
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        std::env::set_var("PROTOC", protoc);
    }
    let root = PathBuf::from("proto");
    let files = [
        "meta/v1alpha1/api.proto",
        "event/v1alpha1/api.proto",
        "volume/v1alpha1/api.proto",
        "cephvol/v1alpha1/progress.proto",
    ]
    .map(|f| root.join(f));
    // Bytes maps are rendered as base64 in JSON/YAML, like Go's encoding/json.
    let bytes_maps = [
        ".volume.v1alpha1.EncryptionSpec.secret_data",
        ".volume.v1alpha1.VolumeAccess.secret_data",
    ];
    let mut builder = tonic_prost_build::configure()
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_transport(false)
        // Deterministic map order on the wire and in CLI output.
        .btree_map(".")
        // The CLI reads and prints objects as JSON/YAML with snake_case proto names and enum numbers.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]");
    for field in bytes_maps {
        builder = builder.field_attribute(field, "#[serde(with = \"crate::base64_map\")]");
    }
    builder.compile_protos(&files, &[root])?;
    Ok(())
}
