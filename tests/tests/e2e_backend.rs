//! Backend selection of the real binary: the Go provider's command line (Ceph connection flags,
//! no `--backend`) never runs on local files. In a build without the Ceph backend it refuses to
//! start and says how to get one; `--backend local` with Ceph connection flags is refused. (The
//! same command line on a real cluster is `tests/tests/e2e_ceph.rs`.)

use std::time::Duration;

use tests::cephvol_bin;
use tests::daemon::Daemon;

/// The flags an existing Go deployment passes (no `--backend`).
fn go_command_line(dir: &std::path::Path) -> Vec<String> {
    let key = dir.join("key");
    let kek = dir.join("kek");
    std::fs::write(&key, "AQBz4F1mAAAAABAAtestkeytestkeytestkey==\n").expect("key file");
    std::fs::write(&kek, [7u8; 32]).expect("kek file");
    vec![
        "--ceph-monitors=127.0.0.1:1".to_string(),
        "--ceph-pool=volumes".to_string(),
        "--ceph-user=volumes".to_string(),
        format!("--ceph-key-file={}", key.display()),
        "--ceph-client=client.volumes".to_string(),
        format!("--ceph-kek-path={}", kek.display()),
        "--ceph-connect-timeout=1s".to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_command_line_never_runs_on_local_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = go_command_line(dir.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut d = Daemon::spawn(cephvol_bin!(), dir, &flags);
    let status = d.wait_exit(Duration::from_secs(60)).await;
    let logs = d.logs();
    // Either way it must not serve: without the Ceph backend it refuses; with it, the monitor
    // at 127.0.0.1:1 does not answer and the connection times out.
    assert!(!status.success(), "it started: {logs}");
    assert!(!logs.contains("local backend"), "{logs}");
    if !cfg!(feature = "ceph") {
        assert!(logs.contains("--features ceph"), "{logs}");
        assert!(logs.contains("--ceph-monitors"), "{logs}");
    }
    let data = d.into_dir_after_exit();
    assert!(
        !data.path().join("data").exists(),
        "a local data directory was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_local_with_ceph_connection_flags_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::spawn(
        cephvol_bin!(),
        dir,
        &["--backend=local", "--ceph-pool=volumes"],
    );
    let status = d.wait_exit(Duration::from_secs(30)).await;
    let logs = d.logs();
    assert!(!status.success(), "it started: {logs}");
    assert!(logs.contains("--backend"), "{logs}");
    assert!(logs.contains("--ceph-pool"), "{logs}");
}
