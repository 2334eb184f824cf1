//! The Redis launchers start real servers: standalone, and a 3-master cluster with replicas.

use rmb_testkit::redis::{RedisCluster, RedisServer};

#[test]
fn standalone_server_starts_and_restarts_on_its_port() {
    let mut server = RedisServer::start();
    assert_eq!(server.cli(&["set", "k", "v"]).as_deref(), Some("OK\n"));
    server.restart();
    // Persistence is off: the restart forgets everything.
    assert_eq!(server.cli(&["exists", "k"]).as_deref(), Some("0\n"));
}

#[test]
fn cluster_forms_with_three_masters_and_a_replica_each() {
    let cluster = RedisCluster::start(3, 1);
    assert_eq!(cluster.nodes.len(), 6);
    assert_eq!(cluster.masters().len(), 3);
    assert!(cluster.url().starts_with("redis-cluster://127.0.0.1:"));
    let info = cluster.nodes[0].cli(&["cluster", "info"]).unwrap();
    assert!(info.contains("cluster_size:3"), "{info}");
}

#[test]
fn unix_socket_server_answers_on_its_socket() {
    let server = RedisServer::start_unix();
    let url = server.unix_url("unix");
    let socket = url.strip_prefix("unix://").unwrap();
    assert!(std::path::Path::new(socket).exists(), "{socket}");
    let out = std::process::Command::new("redis-cli")
        .args(["-s", socket, "ping"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PONG\n");
    assert_eq!(
        server.unix_url("redis+unix"),
        format!("redis+unix://{socket}")
    );
}
