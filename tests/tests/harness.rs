//! The harness itself: raw TCP through Envoy reaches the echo upstream, dropping an [`Envoy`]
//! kills its process, and an upstream started for load keeps no record.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_e2e::bootstrap::{bootstrap, cluster, tcp_listener};
use weft_e2e::envoy::Envoy;
use weft_e2e::upstream::{HttpUpstream, TcpEcho};
use weft_e2e::{client, poll};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_through_envoy_reaches_the_echo_upstream() {
    let echo = TcpEcho::start().await.unwrap();
    let envoy = Envoy::start(&bootstrap(
        vec![tcp_listener("tcp", "echo")],
        vec![cluster("echo", echo.addr())],
    ))
    .await
    .unwrap();
    let mut stream = TcpStream::connect(envoy.listener("tcp").await.unwrap())
        .await
        .unwrap();
    stream.write_all(b"ping over envoy").await.unwrap();
    let mut reply = [0u8; 15];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(&reply, b"ping over envoy");
    assert_eq!(echo.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_envoy_kills_its_process() {
    let envoy = Envoy::start(&bootstrap(Vec::new(), Vec::new()))
        .await
        .unwrap();
    let proc_dir = format!("/proc/{}", envoy.pid());
    assert!(std::path::Path::new(&proc_dir).exists());
    drop(envoy);
    // `drop` kills and reaps the child, so its /proc entry is gone once drop returns.
    poll::until(
        "the Envoy process to disappear",
        Duration::from_secs(5),
        || async { Ok((!std::path::Path::new(&proc_dir).exists()).then_some(())) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_started_for_load_answers_but_keeps_no_record() {
    let recording = HttpUpstream::start("kept").await.unwrap();
    let load = HttpUpstream::start_for_load("load", SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    for upstream in [&recording, &load] {
        let reply = client::get(upstream.addr(), "/x").await.unwrap();
        assert_eq!(
            reply.body,
            format!("upstream {}: GET /x\n", upstream.name())
        );
    }
    assert_eq!(recording.seen().len(), 1);
    assert!(load.seen().is_empty());
}

#[test]
fn the_normalising_upstream_resolves_paths_as_eagerly_as_any_framework() {
    use weft_e2e::upstream::normalise_like_a_framework as resolve;
    for (target, path) in [
        ("/orders/../admin", "/admin"),
        ("/orders/%2e%2e/admin", "/admin"),
        ("/orders%2F..%2Fadmin", "/admin"),
        ("/orders\\..\\admin", "/admin"),
        ("/orders/..;/admin", "/admin"),
        ("/orders;x/./42", "/orders/42"),
        ("//admin", "/admin"),
        ("/%61dmin?x=/../y", "/admin"),
        ("/orders/", "/orders/"),
        ("/", "/"),
    ] {
        assert_eq!(resolve(target), path, "{target}");
    }
}
