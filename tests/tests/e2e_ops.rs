//! Operations of the real daemon: socket permissions, stale and live sockets, graceful SIGTERM,
//! restart on the same data, start-up checks, the metrics endpoint and the flags-only start the
//! poollet deployment uses.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use iri::volume_v1 as pb;
use tests::cephvol_bin;
use tests::daemon::{ops, volume_req, Daemon};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_created_with_mode_0600_by_default() {
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let md = std::fs::symlink_metadata(&d.socket).expect("socket exists");
    assert!(md.file_type().is_socket());
    assert_eq!(mode(&d.socket), 0o600);
    let d2 = Daemon::start(cephvol_bin!(), &["--socket-mode=0660"]).await;
    assert_eq!(mode(&d2.socket), 0o660);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_live_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("cephvol.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    let d = Daemon::start_in(cephvol_bin!(), dir, &[]).await;
    let mut c = d.clients().await;
    c.runtime
        .version(pb::VersionRequest::default())
        .await
        .expect("serves on the replaced socket");

    // a second daemon on the same (live) socket path refuses to start and leaves it alone
    let other = tempfile::tempdir().expect("tempdir");
    let address = format!("--address={}", d.socket.display());
    let mut second = Daemon::spawn(cephvol_bin!(), other, &[address.as_str()]);
    let status = second.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(
        second.logs().contains("another process listens on"),
        "{}",
        second.logs()
    );
    c.runtime
        .version(pb::VersionRequest::default())
        .await
        .expect("the first daemon still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_socket_is_never_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("cephvol.sock");
    std::fs::write(&sock, "precious").expect("write");
    let mut d = Daemon::spawn(cephvol_bin!(), dir, &[]);
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(d.logs().contains("not a socket"), "{}", d.logs());
    assert_eq!(
        std::fs::read_to_string(&sock).expect("still there"),
        "precious"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_and_a_restart_resumes_on_the_same_data() {
    let mut d = Daemon::start(cephvol_bin!(), &[]).await;
    let mut c = d.clients().await;
    let id = ops::create(&mut c, volume_req("standard", 1 << 20, &[])).await;
    ops::wait_available(&mut c, &id).await;
    // a volume still being provisioned when the signal arrives must resume after the restart
    let pending = ops::create(&mut c, volume_req("standard", 1 << 20, &[])).await;
    // an open client connection (as the poollet keeps one) does not hold the shutdown up
    let started = std::time::Instant::now();
    let status = d.terminate().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(c);
    assert!(status.success(), "exit status {status}:\n{}", d.logs());
    assert!(!d.socket.exists(), "socket removed on shutdown");
    assert!(d.logs().contains("stopped"), "{}", d.logs());

    let socket = d.socket.clone();
    let dir = d.into_dir_after_exit();
    let d = Daemon::start_in(cephvol_bin!(), dir, &[]).await;
    assert_eq!(d.socket, socket);
    let mut c = d.clients().await;
    ops::wait_available(&mut c, &id).await;
    ops::wait_available(&mut c, &pending).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_alone_start_the_daemon_like_the_poollet_deployment_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("p.sock");
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(cephvol_bin!())
        .arg(format!("--address=unix://{}", sock.display()))
        .arg(format!("--data-dir={}", data.display()))
        .arg("--zap-devel")
        .arg("--zap-log-level=2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    tests::daemon::eventually(Duration::from_secs(30), "the socket", || {
        let sock = sock.clone();
        async move {
            std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .map(|_| ())
        }
    })
    .await;
    let mut c = cli::client::Clients::connect(&sock).await.expect("connect");
    let v = c
        .runtime
        .version(pb::VersionRequest::default())
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "ceph-provider");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_class_file_stops_start_up_before_anything_listens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let classes = dir.path().join("classes.yaml");
    std::fs::write(&classes, "- name: fast\n- name: fast\n").expect("write");
    let flag = format!("--supported-volume-classes={}", classes.display());
    let mut d = Daemon::spawn(cephvol_bin!(), dir, &[flag.as_str()]);
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(d.logs().contains("duplicate class name"), "{}", d.logs());
    assert!(!d.socket.exists(), "nothing was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_file_defines_the_status_in_file_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let classes = dir.path().join("classes.json");
    std::fs::write(
        &classes,
        r#"[{"name":"fast","capabilities":{"tps":262144000,"iops":15000}},{"name":"cheap","capabilities":{"tps":1048576,"iops":100}}]"#,
    )
    .expect("write");
    let flag = format!("--supported-volume-classes={}", classes.display());
    let d = Daemon::start_in(cephvol_bin!(), dir, &[flag.as_str()]).await;
    let mut c = d.clients().await;
    let st = c
        .runtime
        .status(pb::StatusRequest {})
        .await
        .expect("Status")
        .into_inner();
    let names: Vec<_> = st
        .volume_class_status
        .iter()
        .map(|s| s.volume_class.clone().expect("c").name)
        .collect();
    assert_eq!(names, ["fast", "cheap"]);
    let e = c
        .runtime
        .create_volume(volume_req("standard", 1 << 20, &[]))
        .await
        .expect_err("not configured");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_exports_rpc_and_runner_metrics() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let flag = format!("--metrics-address=127.0.0.1:{port}");
    let d = Daemon::start(cephvol_bin!(), &[flag.as_str()]).await;
    let mut c = d.clients().await;
    c.runtime
        .version(pb::VersionRequest::default())
        .await
        .expect("Version");
    let _ = c.runtime.create_volume(volume_req("nope", 1, &[])).await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let resp = tests::daemon::eventually(Duration::from_secs(10), "the metrics endpoint", || {
        let url = url.clone();
        async move { reqwest::get(url).await.ok() }
    })
    .await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let body = resp.text().await.expect("metrics body");
    assert!(
        body.contains(r#"cephvol_rpc_requests_total{method="Version",code="Ok"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"method="CreateVolume",code="InvalidArgument""#),
        "{body}"
    );
    assert!(body.contains("cephvol_runner_running"), "{body}");
    assert!(
        body.contains(r#"cephvol_controller_queue_length{controller="image"}"#),
        "{body}"
    );
    assert!(
        body.contains("cephvol_rpc_duration_seconds_bucket"),
        "{body}"
    );
}
