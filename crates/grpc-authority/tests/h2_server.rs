//! The `h2` crate's own server (the one under hyper and tonic) on a unix socket, with and without
//! the adapter, driven by a client that sends `:authority` the way gRPC C-core does.
//!
//! Without the adapter the server resets such a stream with PROTOCOL_ERROR — the failure the
//! adapter exists for, kept here so that this test fails if h2 ever changes — and through it the
//! request arrives with `localhost`.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use grpc_authority::raw_client::{RawClient, Response};
use grpc_authority::NormalizeAuthority;
use tokio::net::{UnixListener, UnixStream};

/// HTTP/2 PROTOCOL_ERROR.
const PROTOCOL_ERROR: u32 = 0x1;

/// Serves every connection with h2: each request is answered 200 with the authority the server
/// parsed as the body.
fn serve(listener: UnixListener, adapter: bool) {
    tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                if adapter {
                    handle(NormalizeAuthority::new(conn)).await;
                } else {
                    handle(conn).await;
                }
            });
        }
    });
}

async fn handle<T>(io: T)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        let authority = request
            .uri()
            .authority()
            .map_or("(none)".to_string(), |a| a.to_string());
        let response = http::Response::builder().status(200).body(()).unwrap();
        let mut send = respond.send_response(response, false).unwrap();
        send.send_data(bytes::Bytes::from(authority), true).unwrap();
    }
}

async fn server(dir: &Path, name: &str, adapter: bool) -> std::path::PathBuf {
    let path = dir.join(name);
    serve(UnixListener::bind(&path).unwrap(), adapter);
    path
}

async fn get(path: &Path, authorities: &[&str]) -> Vec<Response> {
    let mut client = RawClient::handshake(UnixStream::connect(path).await.unwrap())
        .await
        .unwrap();
    let mut out = Vec::new();
    for a in authorities {
        let headers = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", *a),
        ];
        out.push(client.request(&headers, &[]).await.unwrap());
    }
    out
}

fn body(r: &Response) -> String {
    assert_eq!(r.header(":status"), Some("200"), "{r:?}");
    String::from_utf8(r.body.clone()).unwrap()
}

#[tokio::test]
async fn a_percent_encoded_socket_path_is_refused_by_plain_h2_and_served_through_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let plain = server(dir.path(), "plain.sock", false).await;
    let adapted = server(dir.path(), "adapted.sock", true).await;

    let refused = get(&plain, &["tmp%2Fcephvol.sock"]).await;
    assert_eq!(refused[0].reset, Some(PROTOCOL_ERROR), "{refused:?}");

    let served = get(&adapted, &["tmp%2Fcephvol.sock"]).await;
    assert_eq!(body(&served[0]), "localhost");
}

#[tokio::test]
async fn raw_and_empty_authorities_are_served_and_valid_ones_reach_the_server_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let plain = server(dir.path(), "plain.sock", false).await;
    let adapted = server(dir.path(), "adapted.sock", true).await;
    for bad in ["/tmp/cephvol.sock", ""] {
        let refused = get(&plain, &[bad]).await;
        assert_eq!(
            refused[0].reset,
            Some(PROTOCOL_ERROR),
            "{bad:?}: {refused:?}"
        );
    }
    let got = get(
        &adapted,
        &["/tmp/cephvol.sock", "", "localhost", "cephvol.example:8080"],
    )
    .await;
    let bodies: Vec<String> = got.iter().map(body).collect();
    assert_eq!(
        bodies,
        vec![
            "localhost",
            "localhost",
            "localhost",
            "cephvol.example:8080"
        ]
    );
}

#[tokio::test]
async fn many_requests_on_one_connection_with_indexed_authorities_are_all_served() {
    let dir = tempfile::tempdir().unwrap();
    let adapted = server(dir.path(), "adapted.sock", true).await;
    let authorities = vec!["tmp%2Fcephvol.sock"; 50];
    let got = get(&adapted, &authorities).await;
    assert!(got.iter().all(|r| body(r) == "localhost"));
}
