//! The CLI (`cephvol get|create|delete|expand`) against the real daemon: the session shown in the
//! README, output formats, `--wait`, NotFound on delete, and address resolution from the env.

use std::process::Output;

use tests::cephvol_bin;
use tests::daemon::Daemon;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {}:\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

/// The id in "Created volume <id>" / "Volume <id> is available" lines.
fn id_in(out: &str, prefix: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {prefix:?} line in {out:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_session_creates_snapshots_clones_expands_and_deletes() {
    let d = Daemon::start(cephvol_bin!(), &[]).await;

    let out = ok(d.cli(&["get", "version"]));
    assert!(
        out.starts_with("NAME") && out.contains("ceph-provider"),
        "{out}"
    );
    let out = ok(d.cli(&["get", "status"]));
    assert!(out.contains("standard") && out.contains("3000"), "{out}");

    // from a YAML file on stdin (irictl style)
    let yaml = "metadata:\n  labels: {app: demo}\nspec:\n  class: standard\n  resources: {storage_bytes: 4194304}\n";
    let out = ok(d.cli_stdin(&["create", "volume", "-f", "-"], yaml));
    let first = id_in(&out, "Created volume ");

    // from flags, waiting until it is available
    let out = ok(d.cli(&[
        "create",
        "volume",
        "--class",
        "standard",
        "--size",
        "4Mi",
        "--wait",
        "--timeout",
        "2m",
    ]));
    let vol = id_in(&out, "Volume ");
    assert!(out.contains("is available"), "{out}");

    let out = ok(d.cli(&[
        "create",
        "volumesnapshot",
        "--volume",
        &vol,
        "--wait",
        "--timeout",
        "2m",
    ]));
    let snap = id_in(&out, "VolumeSnapshot ");
    let out = ok(d.cli(&[
        "create",
        "volume",
        "--class",
        "standard",
        "--size",
        "4Mi",
        "--from-snapshot",
        &snap,
        "--wait",
        "--timeout",
        "2m",
    ]));
    let clone = id_in(&out, "Volume ");

    let out = ok(d.cli(&["get", "volumes"]));
    assert!(
        out.starts_with("ID") && out.contains(&first) && out.contains(&vol) && out.contains(&clone),
        "{out}"
    );
    let out = ok(d.cli(&["get", "volsnap"]));
    assert!(
        out.contains(&snap) && out.contains("VOLUME_SNAPSHOT_READY"),
        "{out}"
    );

    // JSON: snake_case names, enums as numbers
    let json: serde_json::Value =
        serde_json::from_str(&ok(d.cli(&["get", "volume", &vol, "-o", "json"]))).expect("json");
    assert_eq!(json[0]["metadata"]["id"], vol.as_str());
    assert_eq!(json[0]["status"]["state"], 1);
    assert_eq!(json[0]["spec"]["resources"]["storage_bytes"], 4 << 20);
    let yaml = ok(d.cli(&["get", "volume", &vol, "-o", "yaml"]));
    assert!(yaml.contains("storage_bytes: 4194304"), "{yaml}");

    let out = ok(d.cli(&[
        "expand",
        "volume",
        &vol,
        "--size",
        "8Mi",
        "--wait",
        "--timeout",
        "2m",
    ]));
    assert!(out.contains("expanded"), "{out}");
    let out = ok(d.cli(&["get", "events", "--id", &vol]));
    assert!(out.lines().count() > 1 && out.contains(&vol), "{out}");

    let out = ok(d.cli(&["delete", "volume", &"0".repeat(63)]));
    assert!(out.contains("not found"), "{out}");
    let out = ok(d.cli(&[
        "delete",
        "volume",
        &clone,
        &first,
        "--wait",
        "--timeout",
        "2m",
    ]));
    assert!(out.contains(&format!("Volume {clone} deleted")), "{out}");
    let out = ok(d.cli(&[
        "delete",
        "volumesnapshot",
        &snap,
        "--wait",
        "--timeout",
        "2m",
    ]));
    assert!(
        out.contains(&format!("VolumeSnapshot {snap} deleted")),
        "{out}"
    );
    ok(d.cli(&["delete", "volume", &vol, "--wait", "--timeout", "2m"]));
    let out = ok(d.cli(&["get", "volumes"]));
    assert_eq!(out.lines().count(), 1, "only the header is left: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_name_the_code_and_field_and_exit_non_zero() {
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let o = d.cli(&["create", "volume", "--class", "gold", "--size", "1Mi"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("volume.spec.class"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_the_daemon_through_the_endpoint_env_var() {
    let d = Daemon::start(cephvol_bin!(), &[]).await;
    let o = std::process::Command::new(&d.bin)
        .args(["get", "version", "-o", "json"])
        .env(
            "IRI_VOLUME_RUNTIME_ENDPOINT",
            format!("unix://{}", d.socket.display()),
        )
        .output()
        .expect("run");
    let json: serde_json::Value = serde_json::from_str(&ok(o)).expect("json");
    assert_eq!(json["runtime_name"], "ceph-provider");
}
