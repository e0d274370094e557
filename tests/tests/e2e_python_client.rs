//! Clients that are not tonic, over the real daemon's socket (embedded local backend).
//!
//! gRPC C-core (Python, C++, Ruby, PHP), grpc-java and grpc-swift send the percent-encoded socket
//! path as the HTTP/2 `:authority` (`tmp%2F…%2Fcephvol.sock`), which the HTTP/2 layer under tonic
//! refuses unless the daemon's connection adapter (`grpc-authority`) rewrites it.
//!
//! * A Python `grpcio` client with default channel options (`tests/python/iri_client.py`) runs
//!   Version, Status, CreateVolume, ListVolumes and DeleteVolume. It needs the virtualenv that
//!   `cargo xtask test` creates (`target/venv`, packages pinned in `tests/python/requirements.txt`),
//!   or a Python named by `CEPHVOL_PYTHON` that has them. Without one the test says so and passes,
//!   unless `CEPHVOL_PYTHON_REQUIRED=1` (set by `cargo xtask test`, so CI always runs it).
//! * A raw HTTP/2 client sends a Version call with the authority C-core would send; it runs
//!   everywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use grpc_authority::raw_client::RawClient;
use tests::cephvol_bin;
use tests::daemon::Daemon;

/// The workspace root (this package is `tests/` under it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The authority gRPC C-core sends for `unix:<path>`: the path without its leading `/`,
/// percent-encoded.
fn c_core_authority(socket: &Path) -> String {
    let path = socket.to_string_lossy();
    let mut out = String::new();
    for b in path.trim_start_matches('/').bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Python to run the client with, or why there is none.
fn python() -> Result<PathBuf, String> {
    let python = std::env::var_os("CEPHVOL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/venv/bin/python"));
    if !python.exists() {
        return Err(format!("{} does not exist", python.display()));
    }
    let probe = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "{} cannot import grpc and grpc_tools: {}",
            python.display(),
            String::from_utf8_lossy(&probe.stderr)
        ));
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_client_with_default_options_drives_the_daemon_over_the_socket() {
    let python = match python() {
        Ok(p) => p,
        Err(why) if std::env::var("CEPHVOL_PYTHON_REQUIRED").as_deref() == Ok("1") => {
            panic!("CEPHVOL_PYTHON_REQUIRED=1 but there is no usable Python client: {why}");
        }
        Err(why) => {
            eprintln!(
                "skipped: no Python gRPC client ({why}); `cargo xtask test` creates target/venv \
                 (or set CEPHVOL_PYTHON to a Python with grpcio and grpcio-tools)"
            );
            return;
        }
    };
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let script = root().join("tests/python/iri_client.py");
    let protos = root().join("crates/iri/proto");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg("--socket")
        .arg(&d.socket)
        .arg("--proto-dir")
        .arg(&protos);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("running the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed ({}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
        out.status,
        d.logs()
    );
    for call in [
        "Version:",
        "Status:",
        "CreateVolume:",
        "ListVolumes:",
        "DeleteVolume:",
    ] {
        assert!(stdout.contains(call), "no {call} line in:\n{stdout}");
    }
    // The client really sent what tonic alone refuses (else this test would prove nothing).
    let logs = d.logs();
    assert!(
        logs.contains("replaced an :authority") && logs.contains("%2F"),
        "the daemon did not see a percent-encoded :authority:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_the_authority_grpc_c_core_sends_is_served() {
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let authority = c_core_authority(&d.socket);
    assert!(authority.contains("%2F"), "{authority}");
    assert!(!grpc_authority::is_acceptable_authority(
        authority.as_bytes()
    ));
    let conn = tokio::net::UnixStream::connect(&d.socket)
        .await
        .expect("connect");
    let mut client = RawClient::handshake(conn).await.expect("handshake");
    for _ in 0..3 {
        let r = client
            .grpc_unary(&authority, "/volume.v1alpha1.VolumeRuntime/Version", &[])
            .await
            .expect("Version");
        assert_eq!(r.reset, None, "stream reset: {r:?}");
        assert_eq!(r.header(":status"), Some("200"), "{r:?}");
        assert_eq!(r.header("grpc-status"), Some("0"), "{r:?}");
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains("ceph-provider"), "{r:?}");
    }
}
